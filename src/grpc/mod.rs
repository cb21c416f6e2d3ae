//! The Envoy adapter: generated code, conversion to and from the core, and the gRPC service.

mod connection;
pub mod convert;
pub mod pb;
mod service;

pub use connection::CheckConnection;
pub use service::AuthorizationService;
