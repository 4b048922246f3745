//! What a routed call tells the service about itself: its span (with the
//! OpenTelemetry database fields) and, with the `metrics` feature, its
//! counters and histograms (`observe/metrics.rs`).
//!
//! The call loops (`manager/read.rs`, `manager/write.rs`) hold one
//! [`Observer`] per call and tell it four things: the call started, an
//! attempt goes to node N, the call retries after an error, the call ended.
//! Everything recorded is bounded: node names, roles, fixed strings. The
//! statement's text is recorded only when
//! [`Config::record_query_text`](crate::Config::record_query_text) says so;
//! parameters never are.

use tracing::field::Empty;
use tracing::Span;

use std::sync::Arc;

use crate::config::{ReadStrategy, Role};
use crate::connect::node::Node;
use crate::failure::error::Error;
use crate::observe::labels::{operation_name, role_name};
pub(crate) use crate::observe::labels::{Operation, Outcome, Reason};
use crate::observe::metrics::{self, CallTimer, HubMetrics};

/// What an [`Observer`] reads of the deployment (the hub implements it), so
/// that observing a call never names the hub.
pub(crate) trait Deployment {
    /// Whether statement text goes on call spans.
    fn record_query_text(&self) -> bool;
    /// Node `index`'s role in the current snapshot.
    fn role(&self, index: usize) -> Role;
    /// Node `index`, when its slot holds one.
    fn node(&self, index: usize) -> Option<Arc<Node>>;
    /// The deployment-wide metric handles.
    fn metrics(&self) -> &HubMetrics;
}

/// The call span, with every field it may get declared up front (a field
/// not declared when a span is created cannot be recorded later).
macro_rules! call_span {
    ($name:literal, $operation:expr, $($field:tt)*) => {
        tracing::info_span!(
            $name,
            otel.name = $operation.unwrap_or($name),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.namespace = Empty,
            db.operation.name = $operation,
            db.query.text = Empty,
            server.address = Empty,
            server.port = Empty,
            error.type = Empty,
            pgrouter.node = Empty,
            pgrouter.region = Empty,
            pgrouter.role = Empty,
            pgrouter.attempt = Empty,
            pgrouter.reason = Empty,
            $($field)*
        )
    };
}

/// One routed call's span and metrics.
#[derive(Debug)]
pub(crate) struct Observer {
    span: Span,
    operation: Operation,
    timer: CallTimer,
    /// The node of the latest attempt, and its role then.
    last: Option<(usize, Role)>,
    retried: bool,
}

impl Observer {
    /// A read with `strategy`.
    pub(crate) fn read(hub: &impl Deployment, strategy: ReadStrategy, sql: &str) -> Self {
        let span = call_span!(
            "pgrouter.read",
            operation_name(sql),
            pgrouter.strategy = strategy.as_str()
        );
        Self::start(hub, span, Operation::Read, Some(sql))
    }

    /// A single-statement write.
    pub(crate) fn write(hub: &impl Deployment, sql: &str, exactly_once: bool) -> Self {
        let span = call_span!(
            "pgrouter.write",
            operation_name(sql),
            pgrouter.exactly_once = exactly_once
        );
        Self::start(hub, span, Operation::Write, Some(sql))
    }

    /// A transaction (its statements are the closure's).
    pub(crate) fn transaction(hub: &impl Deployment) -> Self {
        let span = call_span!("pgrouter.transaction", None::<&'static str>,);
        Self::start(hub, span, Operation::Transaction, None)
    }

    /// A connection of the primary handed to the caller (counted with the
    /// writes: it waits for a primary as they do).
    pub(crate) fn checkout(hub: &impl Deployment) -> Self {
        let span = call_span!("pgrouter.checkout", None::<&'static str>,);
        Self::start(hub, span, Operation::Write, None)
    }

    fn start(hub: &impl Deployment, span: Span, operation: Operation, sql: Option<&str>) -> Self {
        if hub.record_query_text() {
            if let Some(sql) = sql {
                span.record("db.query.text", sql);
            }
        }
        Self {
            span,
            operation,
            timer: CallTimer::start(),
            last: None,
            retried: false,
        }
    }

    /// The span to run the call in.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Attempt `number` goes to node `index`.
    pub(crate) fn attempt(
        &mut self,
        hub: &impl Deployment,
        index: usize,
        number: u32,
        reason: Reason,
    ) {
        // Nobody to tell: skip even the role's lookup.
        if !cfg!(feature = "metrics") && self.span.is_disabled() {
            return;
        }
        let role = hub.role(index);
        self.last = Some((index, role));
        if self.span.is_disabled() {
            return;
        }
        let Some(node) = hub.node(index) else { return };
        let span = &self.span;
        span.record("pgrouter.node", &*node.context.node);
        span.record("pgrouter.region", &*node.context.region);
        span.record("pgrouter.role", role_name(role));
        span.record("pgrouter.attempt", number);
        span.record("pgrouter.reason", reason.as_str());
        let address = &node.address;
        span.record("db.namespace", &*address.database);
        span.record("server.address", &*address.host);
        span.record("server.port", address.port);
    }

    /// The latest attempt failed with `error` and the call tries again.
    pub(crate) fn retry(&mut self, hub: &impl Deployment, error: &Error) {
        self.retried = true;
        if !cfg!(feature = "metrics") {
            return;
        }
        if let Some(node) = self.last.and_then(|(index, _)| hub.node(index)) {
            metrics::retry(&node.metrics, self.operation, Outcome::of_error(error));
        }
    }

    /// The call was refused before it started (a per-call option out of
    /// range): records it and gives the error back.
    pub(crate) fn rejected(self, hub: &impl Deployment, error: Error) -> Error {
        self.end(hub, Outcome::of_error(&error), true);
        error
    }

    /// The call ended with `result`.
    pub(crate) fn finish<T>(&self, hub: &impl Deployment, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) if self.retried => Outcome::Retried,
            Ok(_) => Outcome::Ok,
            Err(error) => Outcome::of_error(error),
        };
        self.end(hub, outcome, result.is_err());
    }

    fn end(&self, hub: &impl Deployment, outcome: Outcome, failed: bool) {
        if failed {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", outcome.as_str());
        }
        if !cfg!(feature = "metrics") {
            return;
        }
        let node = self
            .last
            .and_then(|(index, role)| Some((hub.node(index)?, role)));
        let node = node.as_ref().map(|(node, role)| (&node.metrics, *role));
        metrics::call(node, hub.metrics(), self.operation, outcome, &self.timer);
    }
}
