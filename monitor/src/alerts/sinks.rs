//! Where alerts go: NDJSON lines on stdout and/or a file (reopened on
//! SIGHUP for log rotation), and Alertmanager.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::PathBuf,
};

use serde::Serialize;
use tracing::warn;

use super::{Alert, alertmanager};

#[derive(Clone, Debug, Default, Serialize)]
pub struct SinkCounters {
    pub alerts_emitted: u64,
    pub ndjson_write_errors: u64,
}

pub struct Sinks {
    stdout: bool,
    file: Option<(PathBuf, File)>,
    alertmanager: Option<alertmanager::Handle>,
    pub counters: SinkCounters,
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sinks {
    pub fn new(config: &crate::config::Alerts) -> anyhow::Result<Sinks> {
        use anyhow::Context as _;
        let file = match &config.file {
            Some(path) => Some((
                path.clone(),
                open_append(path).with_context(|| format!("opening the alerts file {}", path.display()))?,
            )),
            None => None,
        };
        let alertmanager = config
            .alertmanager_url
            .as_ref()
            .map(|url| alertmanager::spawn(url, config.alertmanager_resend_s))
            .transpose()?;
        Ok(Sinks {
            stdout: config.stdout,
            file,
            alertmanager,
            counters: SinkCounters::default(),
        })
    }

    pub fn emit(&mut self, alerts: &[Alert]) {
        for alert in alerts {
            self.counters.alerts_emitted += 1;
            let Ok(mut line) = serde_json::to_string(alert) else {
                continue;
            };
            line.push('\n');
            if self.stdout {
                let mut out = std::io::stdout().lock();
                if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
                    self.counters.ndjson_write_errors += 1;
                }
            }
            if let Some((path, file)) = &mut self.file
                && let Err(e) = file.write_all(line.as_bytes())
            {
                self.counters.ndjson_write_errors += 1;
                warn!(path = %path.display(), error = %e, "could not write an alert to the alerts file");
            }
            if let Some(am) = &self.alertmanager {
                am.send(alert.clone());
            }
        }
    }

    /// After log rotation: write to a new file at the same path.
    pub fn reopen(&mut self) {
        if let Some((path, file)) = &mut self.file {
            match open_append(path) {
                Ok(new) => *file = new,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not reopen the alerts file; still writing to the old one")
                }
            }
        }
    }

    pub fn alertmanager_counters(&self) -> Option<alertmanager::Counters> {
        self.alertmanager.as_ref().map(alertmanager::Handle::counters)
    }
}
