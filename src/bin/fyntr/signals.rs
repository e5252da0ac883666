//! The signal thread: SIGINT and SIGTERM drain the server (a second one exits at once), SIGHUP
//! reloads the settings.

use std::{sync::mpsc, time::Duration};

use tokio::sync::watch;
use tracing::{error, info, warn};

/// Starts watching for signals on a thread of its own. The receiver hears once the handlers
/// are installed; `reload` runs on each SIGHUP.
pub(crate) fn watch(
    stop: watch::Sender<bool>,
    grace: Duration,
    reload: impl FnMut() + Send + 'static,
) -> std::io::Result<mpsc::Receiver<()>> {
    let (watching, watched) = mpsc::channel();
    std::thread::Builder::new()
        .name("fyntr-signals".into())
        .spawn(move || wait_for_signals(stop, grace, watching, reload))?;
    Ok(watched)
}

fn wait_for_signals(
    stop: watch::Sender<bool>,
    grace: Duration,
    watching: mpsc::Sender<()>,
    mut reload: impl FnMut(),
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot watch for signals; stop fyntr with SIGKILL");
            return;
        }
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // The handlers are installed here, when the streams are made, before the caller is
        // told that signals are watched.
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot watch for SIGINT, SIGTERM and SIGHUP");
            let _ = watching.send(());
            return;
        };
        let _ = watching.send(());
        loop {
            tokio::select! {
                _ = interrupt.recv() => {
                    info!("SIGINT received, stopping");
                    break;
                }
                _ = terminate.recv() => {
                    info!("SIGTERM received, stopping");
                    break;
                }
                _ = hangup.recv() => {
                    info!("SIGHUP received, reloading the settings");
                    reload();
                }
            }
        }
        info!(
            grace_s = grace.as_secs(),
            "no longer accepting; draining open tunnels"
        );
        let _ = stop.send(true);
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        warn!("second signal, exiting now");
        std::process::exit(1);
    });
}
