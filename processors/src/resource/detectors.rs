//! Resource detectors: attributes describing the Sluice process, its host and its environment.
//!
//! Each detector runs once, when the processor is built; what it finds does not change while
//! the process runs.

use std::sync::OnceLock;

use serde::Deserialize;
use thiserror::Error;

/// A source of resource attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// `host.name`: the host name of the machine Sluice runs on.
    Host,
    /// `process.pid`: Sluice's process id.
    Process,
    /// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` from Sluice's environment.
    Env,
    /// `service.instance.id`: a UUID v4 generated once per Sluice process.
    ServiceInstance,
}

/// A detector that could not run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DetectError {
    #[error("cannot read the host name: {0}")]
    HostName(String),
    #[error("the host detector needs a Unix system")]
    HostUnsupported,
    #[error("cannot generate service.instance.id: {0}")]
    InstanceId(String),
    #[error("{variable} is not valid UTF-8")]
    NotUnicode { variable: &'static str },
    #[error("OTEL_RESOURCE_ATTRIBUTES: {0}")]
    ResourceAttributes(#[from] ParseError),
}

/// What an attribute detected holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    Str(String),
    Int(i64),
}

impl Detector {
    /// The attributes this detector finds, in order. `env` reads variables through `var`.
    pub fn detect(
        self,
        var: &dyn Fn(&'static str) -> Result<Option<String>, DetectError>,
    ) -> Result<Vec<(String, Detected)>, DetectError> {
        Ok(match self {
            Detector::Host => vec![("host.name".to_string(), Detected::Str(host_name()?))],
            Detector::Process => vec![(
                "process.pid".to_string(),
                Detected::Int(i64::from(std::process::id())),
            )],
            Detector::ServiceInstance => vec![(
                "service.instance.id".to_string(),
                Detected::Str(service_instance_id()?.to_string()),
            )],
            Detector::Env => {
                let mut found: Vec<(String, Detected)> = match var("OTEL_RESOURCE_ATTRIBUTES")? {
                    Some(text) => parse_resource_attributes(&text)?
                        .into_iter()
                        .map(|(k, v)| (k, Detected::Str(v)))
                        .collect(),
                    None => Vec::new(),
                };
                // OTEL_SERVICE_NAME takes precedence over a service.name in the list.
                if let Some(name) = var("OTEL_SERVICE_NAME")?.filter(|n| !n.is_empty()) {
                    found.retain(|(key, _)| key != "service.name");
                    found.insert(0, ("service.name".to_string(), Detected::Str(name)));
                }
                found
            }
        })
    }
}

/// Reads a variable of this process's environment.
pub fn process_env(name: &'static str) -> Result<Option<String>, DetectError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(DetectError::NotUnicode { variable: name }),
    }
}

#[cfg(unix)]
fn host_name() -> Result<String, DetectError> {
    // 255 bytes is POSIX's HOST_NAME_MAX on Linux; one more for the terminating NUL.
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, which is the length passed;
    // gethostname writes no more than that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(DetectError::HostName(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match String::from_utf8_lossy(&buf[..len]).into_owned() {
        name if name.is_empty() => Err(DetectError::HostName("it is empty".to_string())),
        name => Ok(name),
    }
}

#[cfg(not(unix))]
fn host_name() -> Result<String, DetectError> {
    Err(DetectError::HostUnsupported)
}

/// This process's `service.instance.id`: generated on first use, the same ever after, so
/// every pipeline and every reload reports the same instance.
pub fn service_instance_id() -> Result<&'static str, DetectError> {
    static ID: OnceLock<Result<String, String>> = OnceLock::new();
    ID.get_or_init(|| uuid_v4().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| DetectError::InstanceId(e.clone()))
}

/// A random (version 4, RFC 9562) UUID in its hyphenated lower-case form.
fn uuid_v4() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10xx
    let hex = |range: std::ops::Range<usize>| -> String {
        b[range].iter().map(|byte| format!("{byte:02x}")).collect()
    };
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    ))
}

/// Why `OTEL_RESOURCE_ATTRIBUTES` could not be read. Per the SDK specification, the whole
/// variable is then discarded and an error reported.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("{0:?} is not key=value")]
    NotAPair(String),
    #[error("{0:?} has an empty key")]
    EmptyKey(String),
    #[error("{0:?} has a '%' that is not followed by two hex digits")]
    BadPercent(String),
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry SDK specification has it: W3C
/// Baggage-like `key1=value1,key2=value2` without properties, optional whitespace around
/// keys and values trimmed, values percent-decoded (percent-encoded bytes that are not UTF-8
/// become U+FFFD, as W3C Baggage says). Empty list members are skipped. Later duplicates win.
pub fn parse_resource_attributes(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (key, value) = member
            .split_once('=')
            .ok_or_else(|| ParseError::NotAPair(member.to_string()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ParseError::EmptyKey(member.to_string()));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| ParseError::BadPercent(member.to_string()))?;
        pairs.retain(|(k, _)| k != key);
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes; `None` on a `%` without two hex digits after it. `+` stays a plus
/// (this is not form encoding).
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |b: u8| (b as char).to_digit(16);
            out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resource_attributes_parse_with_whitespace_and_percent_decoding() {
        assert_eq!(
            parse_resource_attributes(
                " service.name = checkout , team=pay%20ments,url=https%3A%2F%2Fx.io%2Fa%3Db,plus=a+b"
            )
            .unwrap(),
            pairs(&[
                ("service.name", "checkout"),
                ("team", "pay ments"),
                ("url", "https://x.io/a=b"),
                ("plus", "a+b"),
            ])
        );
        // UTF-8 escapes decode; escapes that are not UTF-8 become U+FFFD.
        assert_eq!(
            parse_resource_attributes("city=M%C3%BCnchen,bad=%FFx").unwrap(),
            pairs(&[("city", "München"), ("bad", "\u{FFFD}x")])
        );
        // The first '=' splits: later ones belong to the value.
        assert_eq!(
            parse_resource_attributes("q=a=b").unwrap(),
            pairs(&[("q", "a=b")])
        );
        // Empty members are skipped, empty values kept, later duplicates win.
        assert_eq!(
            parse_resource_attributes(",a=,,b=1,b=2,").unwrap(),
            pairs(&[("a", ""), ("b", "2")])
        );
        assert_eq!(parse_resource_attributes("").unwrap(), pairs(&[]));
    }

    #[test]
    fn malformed_resource_attributes_are_refused_whole() {
        assert_eq!(
            parse_resource_attributes("a=1,oops"),
            Err(ParseError::NotAPair("oops".to_string()))
        );
        assert_eq!(
            parse_resource_attributes("=1"),
            Err(ParseError::EmptyKey("=1".to_string()))
        );
        assert_eq!(
            parse_resource_attributes("a=100%"),
            Err(ParseError::BadPercent("a=100%".to_string()))
        );
        assert_eq!(
            parse_resource_attributes("a=%zz"),
            Err(ParseError::BadPercent("a=%zz".to_string()))
        );
    }

    fn env<'a>(
        vars: &'a [(&'static str, &'static str)],
    ) -> impl Fn(&'static str) -> Result<Option<String>, DetectError> + 'a {
        move |name| {
            Ok(vars
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string()))
        }
    }

    #[test]
    fn otel_service_name_wins_over_the_list() {
        let vars = [
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-list,team=a"),
            ("OTEL_SERVICE_NAME", "from-variable"),
        ];
        assert_eq!(
            Detector::Env.detect(&env(&vars)).unwrap(),
            vec![
                (
                    "service.name".to_string(),
                    Detected::Str("from-variable".to_string())
                ),
                ("team".to_string(), Detected::Str("a".to_string())),
            ]
        );
        assert_eq!(Detector::Env.detect(&env(&[])).unwrap(), vec![]);
    }

    #[test]
    fn env_detector_reports_a_malformed_list() {
        let vars = [("OTEL_RESOURCE_ATTRIBUTES", "nonsense")];
        assert!(matches!(
            Detector::Env.detect(&env(&vars)),
            Err(DetectError::ResourceAttributes(ParseError::NotAPair(_)))
        ));
    }

    #[test]
    fn service_instance_id_is_a_uuid_v4_stable_for_the_process() {
        let id = service_instance_id().unwrap();
        assert_eq!(id, service_instance_id().unwrap());
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(id.chars().all(|c| !c.is_ascii_uppercase()));
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!(
            matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        assert_ne!(uuid_v4().unwrap(), uuid_v4().unwrap());
    }

    #[test]
    fn host_and_process_detectors_describe_this_process() {
        let none = env(&[]);
        let host = Detector::Host.detect(&none).unwrap();
        assert_eq!(host[0].0, "host.name");
        let Detected::Str(name) = &host[0].1 else {
            panic!("a string")
        };
        assert!(!name.is_empty());
        if let Ok(expected) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(name, expected.trim());
        }
        assert_eq!(
            Detector::Process.detect(&none).unwrap(),
            vec![(
                "process.pid".to_string(),
                Detected::Int(i64::from(std::process::id()))
            )]
        );
    }
}
