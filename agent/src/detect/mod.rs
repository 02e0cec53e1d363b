//! Detect: verdicts on the tables of the traced processes. Today the goroutine leak
//! model ([`leak`]).

pub mod leak;
