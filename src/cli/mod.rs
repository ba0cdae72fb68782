//! The commands besides `run` ([`crate::app::start`]): [`check`] validates a config,
//! [`inspect`] reads bucket state from Redis.

pub mod check;
pub mod inspect;
