//! What went wrong and what to do next: the error type, the safety
//! classifier (phase x cause -> verdict), retry decisions and the advice
//! (HTTP status, retry hint) a service gives its own callers.

pub(crate) mod advice;
pub(crate) mod error;
pub(crate) mod retry;
pub(crate) mod safety;
