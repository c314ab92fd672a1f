//! `concur-gateway`: parse the command line, set up logging, run the command.

use clap::Parser;
use concur_gateway::cli::{self, Cli, Command};

fn main() {
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
            } => cli::sandbox(listen, tls_cert.zip(tls_key), cert_out, tokens).await,
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
