//! What the library tells the service: call spans, metrics, topology
//! events, the status snapshot, readiness and the serving node of a call.

pub(crate) mod call_info;
pub(crate) mod events;
pub(crate) mod labels;
pub(crate) mod metrics;
pub(crate) mod micros;
pub(crate) mod readiness;
pub(crate) mod spans;
pub(crate) mod status;
pub(crate) mod window;
