//! The Envoy adapter: generated code, conversion to and from the core, and the gRPC service.

pub mod convert;
pub mod pb;
mod service;

pub use service::AuthorizationService;
