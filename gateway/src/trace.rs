//! W3C trace context in and out, and the OpenTelemetry samplers.

use sha2::{Digest, Sha256};

use crate::config::{SamplerKind, TracingConfig};
use crate::event::InboundTraceContext;

/// Parses a W3C `traceparent` header; `None` when it is not a valid one (which the
/// specification says to treat as absent).
pub fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<InboundTraceContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    let version = u8::from_str_radix(version, 16).ok()?;
    // Version 00 has exactly four fields; later versions may append more.
    if version == 0 && parts.next().is_some() {
        return None;
    }
    let trace_id: [u8; 16] = decode_hex(trace_id)?;
    let parent_span_id: [u8; 8] = decode_hex(parent_id)?;
    let [flags]: [u8; 1] = decode_hex(flags)?;
    if trace_id == [0; 16] || parent_span_id == [0; 8] {
        return None;
    }
    Some(InboundTraceContext {
        trace_id,
        parent_span_id,
        sampled: flags & 1 == 1,
        tracestate: tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// Renders a `traceparent` header (version 00).
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        encode_hex(trace_id),
        encode_hex(span_id),
        if sampled { "01" } else { "00" }
    )
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// Decodes exactly `N` bytes of lower- or upper-case hex.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// A fresh random trace id (never all zeros).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A fresh random span id (never all zeros).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The trace id for an OpenRouter-style `trace.trace_id`: used as is when it is 32 hex
/// digits, else derived from its SHA-256, so every request naming the same id lands in the
/// same trace.
pub fn trace_id_from_name(name: &str) -> [u8; 16] {
    match decode_hex::<16>(name) {
        Some(id) if id != [0; 16] => id,
        _ => {
            let digest = Sha256::digest(name.as_bytes());
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            id
        }
    }
}

/// The span id for an OpenRouter-style `trace.parent_span_id`: as is when 16 hex digits,
/// else derived from its SHA-256.
pub fn span_id_from_name(name: &str) -> [u8; 8] {
    match decode_hex::<8>(name) {
        Some(id) if id != [0; 8] => id,
        _ => {
            let digest = Sha256::digest(name.as_bytes());
            let mut id = [0u8; 8];
            id.copy_from_slice(&digest[..8]);
            id
        }
    }
}

/// A sampler of the OpenTelemetry SDK specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Samples when the trace id's lower 8 bytes, as a big-endian integer shifted right by
    /// one, are below this bound (`ratio * 2^63`): the SDKs' rule, so every service given the
    /// same ratio keeps the same traces.
    TraceIdRatio(u64),
    /// Follows the remote parent's sampled flag; uses the root sampler when there is none.
    ParentBased(Root),
}

/// The root sampler of a parent-based one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(u64),
}

fn ratio_bound(ratio: f64) -> u64 {
    // The float-to-int cast saturates; ratio is validated to [0, 1].
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

fn ratio_samples(bound: u64, trace_id: &[u8; 16]) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Sampler {
    /// The sampler a `[gateway.tracing]` table describes.
    pub fn from_config(config: &TracingConfig) -> Sampler {
        let ratio = config.sampler_arg;
        let ratio_sampler = |ratio: f64| {
            if ratio >= 1.0 {
                None
            } else {
                Some(ratio_bound(ratio))
            }
        };
        match config.sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::Traceidratio => match ratio_sampler(ratio) {
                None => Sampler::AlwaysOn,
                Some(bound) => Sampler::TraceIdRatio(bound),
            },
            SamplerKind::ParentbasedAlwaysOn => Sampler::ParentBased(Root::AlwaysOn),
            SamplerKind::ParentbasedAlwaysOff => Sampler::ParentBased(Root::AlwaysOff),
            SamplerKind::ParentbasedTraceidratio => match ratio_sampler(ratio) {
                None => Sampler::ParentBased(Root::AlwaysOn),
                Some(bound) => Sampler::ParentBased(Root::TraceIdRatio(bound)),
            },
        }
    }

    /// Whether to record a trace with this id, given the remote parent's sampled flag.
    pub fn should_sample(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(bound) => ratio_samples(bound, trace_id),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::TraceIdRatio(bound)) => ratio_samples(bound, trace_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_parsed() {
        let context = parse_traceparent(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            encode_hex(&context.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(encode_hex(&context.parent_span_id), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(&unsampled, None).unwrap().sampled);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(future, None).is_some());
    }

    #[test]
    fn traceparent_round_trips() {
        let context = parse_traceparent(VALID, None).unwrap();
        let text = format_traceparent(&context.trace_id, &context.parent_span_id, true);
        assert_eq!(text, VALID);
    }

    fn sampler(kind: SamplerKind, ratio: f64) -> Sampler {
        Sampler::from_config(&TracingConfig {
            sampler: kind,
            sampler_arg: ratio,
        })
    }

    #[test]
    fn traceidratio_uses_the_lower_eight_bytes_like_the_sdks() {
        let half = sampler(SamplerKind::Traceidratio, 0.5);
        let mut low = [0u8; 16];
        low[8..].copy_from_slice(&(0x7fff_ffff_ffff_ffffu64).to_be_bytes());
        // (0x7fff.. >> 1) = 0x3fff.. < 2^62: sampled.
        assert!(half.should_sample(&low, None));
        let mut high = [0xffu8; 16];
        assert!(!half.should_sample(&high, None));
        // The upper 8 bytes do not matter.
        high[8..].copy_from_slice(&(0x7fff_ffff_ffff_ffffu64).to_be_bytes());
        assert!(half.should_sample(&high, None));
        assert!(!sampler(SamplerKind::Traceidratio, 0.0).should_sample(&low, None));
        assert!(sampler(SamplerKind::Traceidratio, 1.0).should_sample(&[0xff; 16], None));
    }

    #[test]
    fn traceidratio_keeps_about_its_share() {
        let tenth = sampler(SamplerKind::Traceidratio, 0.1);
        let kept = (0..10_000)
            .filter(|_| tenth.should_sample(&new_trace_id(), None))
            .count();
        assert!((700..1300).contains(&kept), "{kept}");
    }

    #[test]
    fn parent_based_samplers_follow_the_parent_and_fall_back_to_the_root() {
        let zero = sampler(SamplerKind::ParentbasedTraceidratio, 0.0);
        let id = new_trace_id();
        assert!(zero.should_sample(&id, Some(true)));
        assert!(!zero.should_sample(&id, Some(false)));
        assert!(!zero.should_sample(&id, None));
        let on = sampler(SamplerKind::ParentbasedAlwaysOn, 1.0);
        assert!(on.should_sample(&id, None));
        assert!(!on.should_sample(&id, Some(false)));
        let off = sampler(SamplerKind::ParentbasedAlwaysOff, 1.0);
        assert!(!off.should_sample(&id, None));
        assert!(off.should_sample(&id, Some(true)));
        assert!(!sampler(SamplerKind::AlwaysOff, 1.0).should_sample(&id, Some(true)));
        assert!(sampler(SamplerKind::AlwaysOn, 1.0).should_sample(&id, Some(false)));
    }

    #[test]
    fn named_trace_ids_are_stable_and_hex_ones_are_kept() {
        assert_eq!(
            trace_id_from_name("app_trace_001"),
            trace_id_from_name("app_trace_001")
        );
        assert_ne!(
            trace_id_from_name("app_trace_001"),
            trace_id_from_name("app_trace_002")
        );
        assert_eq!(
            encode_hex(&trace_id_from_name("4bf92f3577b34da6a3ce929d0e0e4736")),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            encode_hex(&span_id_from_name("00f067aa0ba902b7")),
            "00f067aa0ba902b7"
        );
    }
}
