//! What each exporter's backend connection looks like right now: the admin API's `/status`
//! and the `sluice_exporter_up` gauge read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::IntGaugeVec;
use serde::Serialize;

/// The state of an exporter's backend, as the last exports found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExporterState {
    /// The last export succeeded.
    Connected,
    /// Nothing has been sent yet, or the exporter is disabled (`enabled = false`).
    Disconnected,
    /// The most recent exports failed.
    Error,
}

impl ExporterState {
    const ALL: [ExporterState; 3] = [
        ExporterState::Connected,
        ExporterState::Disconnected,
        ExporterState::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ExporterState::Connected => "connected",
            ExporterState::Disconnected => "disconnected",
            ExporterState::Error => "error",
        }
    }
}

/// An exporter's status, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExporterStatusReport {
    /// The exporter's type (`otlp_grpc`, ...).
    #[serde(rename = "type")]
    pub type_name: String,
    pub enabled: bool,
    pub state: ExporterState,
    /// The last failure's message, kept after a later success so the cause stays visible.
    pub last_error: Option<String>,
    /// When the last failure happened, in RFC 3339.
    pub last_error_time: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// When the last export succeeded, in RFC 3339.
    pub last_success_time: Option<String>,
}

#[derive(Debug)]
struct Inner {
    report: ExporterStatusReport,
}

/// One exporter's live status. Cheap to update on every export.
#[derive(Debug)]
pub struct ExporterStatus {
    id: String,
    inner: Mutex<Inner>,
    /// `sluice_exporter_up` and `sluice_exporter_state`.
    gauges: (IntGaugeVec, IntGaugeVec),
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl ExporterStatus {
    fn new(id: &str, type_name: &str, enabled: bool, gauges: (IntGaugeVec, IntGaugeVec)) -> Self {
        let status = ExporterStatus {
            id: id.to_string(),
            inner: Mutex::new(Inner {
                report: ExporterStatusReport {
                    type_name: type_name.to_string(),
                    enabled,
                    state: ExporterState::Disconnected,
                    last_error: None,
                    last_error_time: None,
                    consecutive_failures: 0,
                    last_success_time: None,
                },
            }),
            gauges,
        };
        status.publish(ExporterState::Disconnected);
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Only plain assignments happen under the lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: ExporterState) {
        let (up, states) = &self.gauges;
        up.with_label_values(&[&self.id])
            .set(i64::from(state == ExporterState::Connected));
        for candidate in ExporterState::ALL {
            states
                .with_label_values(&[&self.id, candidate.as_str()])
                .set(i64::from(candidate == state));
        }
    }

    /// Records an export the backend accepted.
    pub fn succeeded(&self) {
        let mut inner = self.lock();
        if !inner.report.enabled {
            return;
        }
        inner.report.state = ExporterState::Connected;
        inner.report.consecutive_failures = 0;
        inner.report.last_success_time = Some(rfc3339(SystemTime::now()));
        drop(inner);
        self.publish(ExporterState::Connected);
    }

    /// Records a failed export attempt and why.
    pub fn failed(&self, error: &str) {
        let mut inner = self.lock();
        inner.report.state = ExporterState::Error;
        inner.report.consecutive_failures += 1;
        inner.report.last_error = Some(error.to_string());
        inner.report.last_error_time = Some(rfc3339(SystemTime::now()));
        drop(inner);
        self.publish(ExporterState::Error);
    }

    /// Turns the exporter on or off; a disabled exporter is Disconnected.
    pub fn set_enabled(&self, enabled: bool) {
        let mut inner = self.lock();
        inner.report.enabled = enabled;
        if !enabled {
            inner.report.state = ExporterState::Disconnected;
        }
        let state = inner.report.state;
        drop(inner);
        self.publish(state);
    }

    /// A copy of the current status.
    pub fn report(&self) -> ExporterStatusReport {
        self.lock().report.clone()
    }

    /// The current state.
    pub fn state(&self) -> ExporterState {
        self.lock().report.state
    }
}

/// Every exporter's status, by id: what `/status` lists.
#[derive(Clone, Default)]
pub struct StatusBoard {
    exporters: Arc<Mutex<BTreeMap<String, Arc<ExporterStatus>>>>,
}

impl StatusBoard {
    /// The status of exporter `id`, created Disconnected the first time. An exporter rebuilt on
    /// reload keeps its history.
    pub fn exporter(
        &self,
        id: &str,
        type_name: &str,
        enabled: bool,
        gauges: (IntGaugeVec, IntGaugeVec),
    ) -> Arc<ExporterStatus> {
        let mut exporters = self.exporters.lock().unwrap_or_else(|p| p.into_inner());
        let status = exporters
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(ExporterStatus::new(id, type_name, enabled, gauges)));
        status.set_enabled(enabled);
        Arc::clone(status)
    }

    /// Forgets exporter `id` (removed from the config).
    pub fn remove_exporter(&self, id: &str) {
        self.exporters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Every exporter's status, by id.
    pub fn exporters(&self) -> BTreeMap<String, ExporterStatusReport> {
        self.exporters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, status)| (id.clone(), status.report()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn board_exporter(telemetry: &Telemetry, enabled: bool) -> Arc<ExporterStatus> {
        telemetry.exporter_status("jaeger", "otlp_grpc", enabled)
    }

    #[test]
    fn an_exporter_moves_through_disconnected_connected_and_error() {
        let telemetry = Telemetry::new();
        let status = board_exporter(&telemetry, true);
        assert_eq!(status.state(), ExporterState::Disconnected);
        assert!(
            telemetry
                .render()
                .contains("sluice_exporter_up{exporter=\"jaeger\"} 0")
        );

        status.succeeded();
        assert_eq!(status.state(), ExporterState::Connected);
        assert!(
            telemetry
                .render()
                .contains("sluice_exporter_up{exporter=\"jaeger\"} 1")
        );

        status.failed("connection refused");
        status.failed("connection refused");
        let report = status.report();
        assert_eq!(report.state, ExporterState::Error);
        assert_eq!(report.consecutive_failures, 2);
        assert_eq!(report.last_error.as_deref(), Some("connection refused"));
        assert!(report.last_error_time.is_some());
        let rendered = telemetry.render();
        assert!(rendered.contains("sluice_exporter_up{exporter=\"jaeger\"} 0"));
        assert!(
            rendered.contains("sluice_exporter_state{exporter=\"jaeger\",state=\"error\"} 1"),
            "{rendered}"
        );

        status.succeeded();
        let report = status.report();
        assert_eq!(report.consecutive_failures, 0);
        // The cause of the last failure stays visible after recovery.
        assert_eq!(report.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn a_disabled_exporter_stays_disconnected() {
        let telemetry = Telemetry::new();
        let status = board_exporter(&telemetry, false);
        status.succeeded();
        assert_eq!(status.state(), ExporterState::Disconnected);
        let listed = telemetry.status().exporters();
        assert!(!listed["jaeger"].enabled);
    }
}
