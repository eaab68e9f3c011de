//! Health events on their way out: their CloudEvents headers, the JetStream stream, the outbox relay and the relay's
//! leadership (one publisher at a time). The envelope they carry is [`crate::envelope`],
//! below both the store and this module.

pub mod cloudevents;
pub mod jetstream;
pub mod leader;
pub mod relay;
pub mod retention;
mod supervisor;
