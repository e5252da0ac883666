//! What a service install needs: shell completions and the man page generated from the same
//! command-line definition as the parser, a systemd unit that `systemd-analyze verify` accepts
//! with its hardening in place, and a launchd plist that parses. No proxy traffic here.

#![allow(missing_docs)]

mod common;

use std::process::Command;

use common::*;

fn fyntr(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_fyntr"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fyntr {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn completions_cover_every_shell_and_flag() {
    let bash = fyntr(&["completions", "bash"]);
    for flag in [
        "--socks5-port",
        "--threat-feed-file",
        "--upload-rate",
        "--backend",
    ] {
        assert!(bash.contains(flag), "bash completion lacks {flag}");
    }
    let script = std::env::temp_dir().join(format!("fyntr-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(fyntr(&["completions", "zsh"]).starts_with("#compdef fyntr"));
    assert!(fyntr(&["completions", "fish"]).contains("complete -c fyntr"));
    let wrong = Command::new(env!("CARGO_BIN_EXE_fyntr"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

#[test]
fn the_man_page_documents_the_options() {
    let page = fyntr(&["man"]);
    assert!(
        page.contains(".TH fyntr 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    for option in [
        r"\-\-socks5\-port",
        r"\-\-threat\-action",
        r"\-\-max\-connections",
        "FYNTR_PORT",
    ] {
        assert!(page.contains(option), "man page lacks {option}");
    }
    if have("man") {
        let path = std::env::temp_dir().join(format!("fyntr-{}.1", std::process::id()));
        std::fs::write(&path, &page).unwrap();
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("socks5"));
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/fyntr.service"
    ))
    .unwrap();
    for setting in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=io_uring_setup io_uring_enter io_uring_register",
        "ExecStart=/usr/local/bin/fyntr",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting:?}");
    }
    if !have("systemd-analyze") {
        eprintln!("skipped the verify step: no systemd-analyze here");
        return;
    }
    // Verified as installed, with the binary built here and without the man page link (not
    // installed on the test machine).
    let local = unit
        .replace("/usr/local/bin/fyntr", env!("CARGO_BIN_EXE_fyntr"))
        .replace("Documentation=man:fyntr(1)\n", "");
    let dir = std::env::temp_dir().join(format!("fyntr-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fyntr.service");
    std::fs::write(&path, local).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && !said.contains("fyntr.service"),
        "{said}"
    );
}

#[test]
fn the_launchd_plist_parses() {
    require("python3");
    let script = concat!(
        "import plistlib, sys\n",
        "d = plistlib.load(open(sys.argv[1], 'rb'))\n",
        "assert d['Label'] == 'dev.fyntr'\n",
        "assert d['ProgramArguments'][0].endswith('/.cargo/bin/fyntr')\n",
        "assert d['RunAtLoad'] is True and d['KeepAlive']['SuccessfulExit'] is False\n",
        "print(d['EnvironmentVariables']['FYNTR_PORT'])\n",
    );
    let output = Command::new("python3")
        .args([
            "-c",
            script,
            concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/dev.fyntr.plist"),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "9999");
}
