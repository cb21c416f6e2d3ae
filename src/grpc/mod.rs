//! The Envoy adapter: generated code, conversion to and from the core, and the gRPC service.

mod answer_gate;
mod connection;
pub mod convert;
pub mod pb;
mod service;

pub use answer_gate::AnswerGate;
pub use connection::CheckConnection;
pub use service::AuthorizationService;
