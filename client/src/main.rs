//! `kforge`: build and sign kernel-module images. This binary holds the CLI.

mod commands;
mod hints;
mod progress;
mod remote;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Build and sign out-of-tree kernel modules and the images that carry them.
#[derive(Debug, Parser)]
#[command(name = "kforge", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the signing API (gRPC) on loopback, or as configured.
    Serve(commands::serve::Args),
    /// Generate a module-signing key and self-signed certificate (ready for `mokutil --import`).
    Keygen(commands::keygen::Args),
    /// Sign kernel modules in place or into another directory, byte-compatible with sign-file.
    Sign(commands::sign::Args),
    /// Sign the modules inside a container image: one new layer, pushed without rebuilding.
    SignImage(commands::sign_image::Args),
    /// Build an image through BuildKit (buildkitd or a Docker engine) and push it.
    Build(commands::build::Args),
    /// Build and sign a module image for one kernel in one request (KMM's build and sign sections).
    BuildSign(commands::build_sign::Args),
    /// The Driver Toolkit image (DTK_AUTO) for a kernel.
    Dtk(commands::dtk::Args),
    /// Run the reconciler: KMM Modules become digest-pinned module-loader and device-plugin DaemonSets.
    Reconcile(commands::reconcile::Args),
    /// Print what the reconciler would create for Modules and Nodes read from files (offline).
    Plan(commands::plan::Args),
    /// Print the CustomResourceDefinition of KMM's Module as kforge reads it.
    Crd(commands::crd::Args),
    /// Verify modules' signatures against a certificate.
    Verify(commands::verify::Args),
    /// Show what is in modules and their signatures, without checking trust.
    Inspect(commands::verify::InspectArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Keygen(args) => commands::keygen::run(args),
        Command::Sign(args) => commands::sign::run(args),
        Command::SignImage(args) => commands::sign_image::run(args),
        Command::Build(args) => commands::build::run(args),
        Command::BuildSign(args) => commands::build_sign::run(args),
        Command::Dtk(args) => commands::dtk::run(args),
        Command::Reconcile(args) => commands::reconcile::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Crd(args) => commands::crd::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Inspect(args) => commands::verify::inspect(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
