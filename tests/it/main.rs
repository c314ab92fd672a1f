//! One integration test binary (DESIGN.md): modules by area.

mod clamav;
mod gateway;
mod inspect_img;
mod process;
mod sandbox;
mod support;
