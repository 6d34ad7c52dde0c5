//! One module per subcommand: its flags and what it runs. What they share (the flags
//! common to the load-making ones, the plan, the report) is in the crate's root.

pub mod hold;
pub mod merge_logs;
pub mod plot_compare;
pub mod ramp;
pub mod rate;
pub mod reconnect;
pub mod slowloris;
pub mod storm;

use super::*;
