//! The doors pushes come in through. Each turns bytes into a [`crate::push::Push`]
//! and hands it to [`crate::app::AppState::publish`]; none knows of another.

pub mod http;
pub mod rate;
pub mod text;
pub mod throttle;
pub mod udp;
