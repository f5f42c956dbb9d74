//! Per-request event trace in Chrome's trace-event format (open in chrome://tracing or Perfetto).

use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
struct Event {
    name: String,
    cat: &'static str,
    ph: &'static str,
    ts: f64,
    pid: u32,
    tid: u64,
    s: &'static str,
    args: serde_json::Value,
}

pub struct Tracer {
    enabled: bool,
    start: Instant,
    events: Vec<Event>,
}

impl Tracer {
    pub fn new(enabled: bool) -> Self {
        Tracer { enabled, start: Instant::now(), events: Vec::new() }
    }

    /// Records an instant event on the request's track (`tid` = internal sequence id).
    pub fn event(&mut self, seq: u64, request_id: &str, name: &str, args: serde_json::Value) {
        if !self.enabled {
            return;
        }
        let mut args = args;
        if let Some(obj) = args.as_object_mut() {
            obj.insert("request_id".into(), request_id.into());
        }
        self.events.push(Event {
            name: name.to_string(),
            cat: "request",
            ph: "i",
            ts: self.start.elapsed().as_secs_f64() * 1e6,
            pid: 0,
            tid: seq,
            s: "t",
            args,
        });
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.events).unwrap_or_else(|_| "[]".to_string())
    }
}
