#![no_main]
use concur_gateway::inspect::MediaType;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check(MediaType::Png, data));
