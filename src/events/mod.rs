//! Health events: the envelope, the JetStream stream, and the outbox relay.

pub mod envelope;
pub mod jetstream;
pub mod leader;
pub mod relay;
