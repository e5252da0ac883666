//! Where the settings come from: flags, then `FYNTR_*` variables, then the `--config` file,
//! then the defaults.
//!
//! The file's keys are the long option names with underscores, so one parser and one set of
//! checks serve every source: each key the flags and variables left unset becomes the
//! argument `--key=value` ahead of the real ones, and the command line is parsed again.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// Options that say where settings come from or what to do with them, not settings.
const NOT_SETTINGS: [&str; 4] = ["config", "check_config", "help", "version"];

/// The settings, and which of them the file set.
pub(crate) struct Loaded {
    pub(crate) cli: Cli,
    matches: ArgMatches,
    file: Option<PathBuf>,
    from_file: Vec<String>,
}

/// Why the settings could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The command line (or a variable) is wrong, or asks for help or the version.
    Usage(clap::Error),
    /// The file is unreadable or wrong; the message names it and the key.
    File(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(error) => write!(f, "{}", error.render()),
            Self::File(message) => f.write_str(message),
        }
    }
}

/// Loads the settings from `args` (the program's arguments, name first), the environment and
/// the file `--config` names.
pub(crate) fn load(args: &[OsString]) -> Result<Loaded, LoadError> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(LoadError::Usage)?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        let cli = Cli::from_arg_matches(&matches).map_err(LoadError::Usage)?;
        return Ok(Loaded {
            cli,
            matches,
            file: None,
            from_file: Vec::new(),
        });
    };
    let (file_args, from_file) =
        arguments_from_file(&path, &command, &matches).map_err(LoadError::File)?;
    // The file's arguments go first, so that a subcommand stays last.
    let mut combined = args[..1].to_vec();
    combined.extend(file_args);
    combined.extend_from_slice(&args[1..]);
    let matches = command
        .try_get_matches_from(&combined)
        .map_err(LoadError::Usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(LoadError::Usage)?;
    Ok(Loaded {
        cli,
        matches,
        file: Some(path),
        from_file,
    })
}

/// The arguments the file at `path` stands for, for the options no flag or variable set, and
/// the keys they came from.
fn arguments_from_file(
    path: &Path,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<(Vec<OsString>, Vec<String>), String> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading the config file {file}: {error}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| format!("{file}: not valid TOML: {error}"))?;
    let mut args = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && arg.get_long().is_some())
            .filter(|_| !NOT_SETTINGS.contains(&key.as_str()))
            .ok_or_else(|| {
                format!(
                    "{file}: unknown key `{key}` (keys are the long option names with underscores, such as max_connections)"
                )
            })?;
        let long = arg.get_long().unwrap_or(key);
        let values = values_of(arg, value).map_err(|expected| {
            format!(
                "{file}: key `{key}`: expected {expected}, found {}",
                value.type_str()
            )
        })?;
        let key_args: Vec<OsString> = match arg.get_action() {
            ArgAction::SetTrue => {
                if values == ["true"] {
                    vec![format!("--{long}").into()]
                } else {
                    Vec::new()
                }
            }
            _ => values
                .iter()
                .map(|value| format!("--{long}={value}").into())
                .collect(),
        };
        // Each key is parsed alone first, so that a wrong value is reported with its key and
        // file rather than as a flag the user never typed.
        let mut alone = vec![OsString::from("fyntr")];
        alone.extend(key_args.iter().cloned());
        if let Err(error) = command.clone().try_get_matches_from(alone) {
            let detail = error
                .render()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string();
            return Err(format!("{file}: key `{key}`: {detail}"));
        }
        let set_elsewhere = matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set_elsewhere {
            args.extend(key_args);
            keys.push(key.clone());
        }
    }
    Ok((args, keys))
}

/// The values of one key as command-line text, or what type the option expects.
fn values_of(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, &'static str> {
    let takes_many = matches!(arg.get_action(), ArgAction::Append);
    let on_off = {
        let names: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|value| value.get_name().to_string())
            .collect();
        names == ["on", "off"]
    };
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(yes) if on_off => Ok(if *yes { "on" } else { "off" }.to_string()),
        _ => Err(if takes_many {
            "a string or number, or an array of them"
        } else {
            "a string or a number"
        }),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(yes)) => Ok(vec![yes.to_string()]),
        (ArgAction::SetTrue, _) => Err("true or false"),
        (ArgAction::Append, toml::Value::Array(items)) => items.iter().map(scalar).collect(),
        (_, value) => scalar(value).map(|text| vec![text]),
    }
}

impl Loaded {
    /// The effective settings as TOML, each with where it came from: what `--check-config`
    /// prints, and what a config file holding them would say.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if NOT_SETTINGS.contains(&id) || arg.get_long().is_none() {
                continue;
            }
            let source = if self.from_file.iter().any(|key| key == id) {
                format!(
                    "file {}",
                    self.file.as_deref().unwrap_or(Path::new("")).display()
                )
            } else {
                match self.matches.value_source(id) {
                    Some(ValueSource::CommandLine) => "flag".to_string(),
                    Some(ValueSource::EnvVariable) => format!(
                        "variable {}",
                        arg.get_env().and_then(|env| env.to_str()).unwrap_or("")
                    ),
                    Some(ValueSource::DefaultValue) => "default".to_string(),
                    _ => "default".to_string(),
                }
            };
            let raw: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|values| {
                    values
                        .map(|value| toml_value(&value.to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            let line = match (arg.get_action(), raw.as_slice()) {
                (ArgAction::Append, values) => format!("{id} = [{}]", values.join(", ")),
                (_, []) => format!("# {id} is not set"),
                (_, values) => format!("{id} = {}", values.join(", ")),
            };
            out.push_str(&format!("{line:<40} # {source}\n"));
        }
        out
    }
}

/// A command-line value written as a TOML value: numbers and booleans bare, the rest quoted.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" {
        text.to_string()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}
