//! What the kernel reports about a process: CPU time from `/proc/PID/stat`, memory from
//! `/proc/PID/status`.

use std::process::Command;

/// Errors reading a process's figures.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected contents in {path}: {what}")]
    Parse { path: String, what: &'static str },
    #[error("cannot learn the clock tick rate from `getconf CLK_TCK`: {0}")]
    ClockTicks(String),
}

/// Clock ticks per second, the unit of utime and stime in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> Result<u64, ProcError> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|error| ProcError::ClockTicks(error.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .ok()
        .filter(|ticks| *ticks > 0)
        .ok_or_else(|| ProcError::ClockTicks(format!("got {:?}", text.trim())))
}

fn read(path: String) -> Result<(String, String), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// User plus system CPU time of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&text).ok_or(ProcError::Parse {
        path,
        what: "utime and stime (fields 14 and 15)",
    })
}

/// Fields 14 (utime) and 15 (stime) of a stat line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` figure from `/proc/PID/status`, such as `VmRSS` or `VmHWM`, in MiB.
pub fn status_mib(pid: u32, key: &str) -> Result<f64, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/status"))?;
    parse_status_kib(&text, key)
        .map(|kib| kib as f64 / 1024.0)
        .ok_or(ProcError::Parse {
            path,
            what: "the VmRSS/VmHWM line",
        })
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn this_process_has_a_readable_cpu_time_and_peak_rss() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        let hwm = status_mib(pid, "VmHWM").unwrap();
        let rss = status_mib(pid, "VmRSS").unwrap();
        assert!(hwm >= rss && rss > 0.0, "hwm {hwm} rss {rss}");
    }

    #[test]
    fn status_keys_must_match_whole() {
        let status = "VmHWMX:\t 1 kB\nVmHWM:\t  20480 kB\nVmRSS:\t 10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }
}
