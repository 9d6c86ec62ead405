//! The per-job log file `<logdir>/<job>.log` (append), through `log` +
//! `simplelog`. Set up by the daemon before the job starts; written from any
//! thread through the `log` macros.
//!
//! `normal` logs the lifecycle, `debug` adds protocol detail, `off` creates
//! no file at all. Files are created 0640 (the command line can hold
//! secrets). Every line is written with one `write` to an `O_APPEND` file and
//! starts with the job instance, so overlapping instances of one job can share
//! the file. `reopen()` (on SIGHUP) reopens the path, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

use crate::config::{Config, LogLevel};

/// A handle on the log file once logging is set up.
#[derive(Clone)]
pub struct LogHandle {
    path: PathBuf,
    reopen: Arc<AtomicBool>,
}

impl LogHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopen the file before the next line (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Append raw text (undelivered job output) outside the `log` macros.
    pub fn append_raw(&self, text: &str) -> io::Result<()> {
        open_log(&self.path)?.write_all(text.as_bytes())
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes whole lines, each prefixed, each with a single `write` call.
struct LineSink {
    path: PathBuf,
    file: File,
    prefix: Vec<u8>,
    line: Vec<u8>,
    reopen: Arc<AtomicBool>,
}

impl LineSink {
    fn emit_line(&mut self) -> io::Result<()> {
        if self.reopen.swap(false, Ordering::Relaxed) {
            if let Ok(file) = open_log(&self.path) {
                self.file = file;
            }
        }
        // The time is written here, not by simplelog: its `time` crate reads
        // the clock through std, which fails after 2038 on 32-bit musl
        // (clock.rs).
        let mut stamp = String::with_capacity(32);
        crate::wire::protocol::push_log_timestamp(&mut stamp, crate::os::clock::now());
        let mut whole = Vec::with_capacity(self.prefix.len() + stamp.len() + 1 + self.line.len());
        whole.extend_from_slice(&self.prefix);
        whole.extend_from_slice(stamp.as_bytes());
        whole.push(b' ');
        whole.append(&mut self.line);
        // A full disk must not stop the job: losing a log line is the lesser harm.
        let _ = self.file.write_all(&whole);
        Ok(())
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") {
                self.emit_line()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.line.push(b'\n');
            self.emit_line()?;
        }
        Ok(())
    }
}

/// Set up logging for `cfg`. `Ok(None)` when the level is `off`; `Err` says
/// why the file could not be opened (the job still runs, and its first output
/// line carries the message).
pub fn init(cfg: &Config) -> Result<Option<LogHandle>, String> {
    let level = match cfg.log_level {
        LogLevel::Off => return Ok(None),
        LogLevel::Normal => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    };
    let path = cfg.log_path();
    if !cfg.log_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&cfg.log_dir)
            .map_err(|e| format!("cannot create log directory {}: {e}", cfg.log_dir.display()))?;
    }
    let file =
        open_log(&path).map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let reopen = Arc::new(AtomicBool::new(false));
    let sink = LineSink {
        path: path.clone(),
        file,
        prefix: format!("[{}] ", cfg.job_instance).into_bytes(),
        line: Vec::with_capacity(256),
        reopen: reopen.clone(),
    };
    let config = ConfigBuilder::new()
        // Stamped by LineSink instead (see emit_line).
        .set_time_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        // tungstenite's own debug lines are frame dumps, not ours to keep.
        .add_filter_ignore_str("tungstenite")
        .build();
    WriteLogger::init(level, config, sink)
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(Some(LogHandle { path, reopen }))
}
