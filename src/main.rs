//! `concur-gateway`: parse the command line, set up logging, run the command.

use clap::Parser;
use concur_gateway::cli::{self, Cli, Command};

fn main() {
    tune_malloc();
    let cli = Cli::parse();
    concur_gateway::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => cli::serve(config).await,
            Command::Demo {
                listen,
                admin_listen,
            } => concur_gateway::demo::run(listen, admin_listen).await,
            Command::Sandbox {
                listen,
                tls_cert,
                tls_key,
                cert_out,
                tokens,
                oauth_clients,
            } => {
                cli::sandbox(
                    listen,
                    tls_cert.zip(tls_key),
                    cert_out,
                    tokens,
                    oauth_clients,
                )
                .await
            }
            Command::CheckConfig { config } => {
                cli::check_config(config, &mut std::io::stdout()).await
            }
            Command::Scan {
                json,
                content_type,
                max_pixels,
                allow_pdf_active_content,
                files,
            } => cli::scan(
                &files,
                content_type.as_deref(),
                json,
                max_pixels,
                allow_pdf_active_content,
            ),
        }
    });
    std::process::exit(code);
}

/// glibc's allocator hands the free top of each arena back to the kernel
/// (`madvise(MADV_DONTNEED)`) as soon as more than 128 KiB of it is free.
/// An upload's 64 KiB read buffers come and go many times a second, so
/// under load every few requests paid for a `madvise`, then for page faults
/// and zeroed pages when the next buffer touched that memory again: about
/// 6 % of the gateway's CPU at 100 KiB in a profile (`docs/benchmarks.md`).
/// Keeping up to 8 MiB free per arena (and serving allocations up to 1 MiB
/// from the arenas, not from fresh `mmap`s) stops that churn. The peak RSS is
/// unchanged (the memory is what the peak needed anyway); after a burst,
/// up to 8 MiB per arena stays resident. `MALLOC_TRIM_THRESHOLD_` /
/// `MALLOC_MMAP_THRESHOLD_` in the environment still decide when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    const TRIM_THRESHOLD: libc::c_int = 8 << 20;
    const MMAP_THRESHOLD: libc::c_int = 1 << 20;
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets allocator parameters (it takes the
        // arena lock); it is called first thing in main, before any other
        // thread exists.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
