//! The `scenecast` command: `serve` (the default), `check-config` and `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `0.1.0 (commit abc1234)`; the commit is "unknown" when built without git
/// (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCENECAST_COMMIT"),
    ")"
);

const CONFIG_HELP: &str = "\
Configuration, each layer over the one before:
  1. built-in defaults (README.md, \"Configuration\", lists every key)
  2. a TOML file: --config FILE, else ./scenecast.toml when it exists
  3. environment variables SCENECAST__SECTION__KEY, e.g.
       SCENECAST__SERVER__BIND=0.0.0.0:9502
       SCENECAST__AUTH__API_TOKENS=token1,token2   (lists are comma-separated)
     a text setting is taken exactly as typed (SCENECAST__SERVER__NODE_ID=007)

Logging: RUST_LOG (default info), e.g. RUST_LOG=scenecast=debug

Examples:
  scenecast                                    serve with ./scenecast.toml
  scenecast serve --config examples/workerman.toml
  scenecast check-config --config my.toml      print the settings in force, or the error
  scenecast token --uid 42 --page home         print a signed connect token (JWT) for uid 42";

#[derive(Parser)]
#[command(
    name = "scenecast",
    version = VERSION,
    about = "Real-time push server: pages keep a WebSocket open, back offices push to them",
    after_help = CONFIG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (default: ./scenecast.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP, WebSocket and the configured ingress ports (the default).
    Serve,
    /// Load and check the configuration, print the settings in force (secrets
    /// masked) and exit 0; or print the error and exit 2.
    CheckConfig,
    /// Print an HS256 JWT for `?token=` that binds a uid (and limits its pages),
    /// signed with the config's auth.jwt_secret; exit 2 when none is configured.
    Token {
        /// The uid the token binds (its `sub`).
        #[arg(long, value_name = "U")]
        uid: String,
        /// A page the token may watch; repeat for several. None = any page.
        #[arg(long = "page", value_name = "P")]
        pages: Vec<String>,
        /// Seconds the token is valid for (its `exp` is now + TTL).
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig) => check_config(cli.config),
        Some(Command::Token { uid, pages, ttl }) => token(cli.config, &uid, &pages, ttl),
        Some(Command::Serve) | None => serve(cli.config),
    }
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    match scenecast::Settings::load_with_source(file.as_deref()) {
        Ok((settings, source)) => {
            println!("# {source}");
            println!("# valid; the settings in force (secrets masked):");
            // Two settings are resolved at start, not in the file: say what they become.
            if settings.server.node_id.is_empty() {
                println!("# server.node_id \"\" = a unique id per process (hostname-pid-random)");
            }
            if settings.server.max_connections.is_none() {
                println!(
                    "# server.max_connections unset = the fd limit less a reserve ({} here)",
                    scenecast::net::auto_max_connections()
                );
            }
            println!();
            print!("{}", settings.to_masked_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenecast: config error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `scenecast token`: the JWT on stdout, or the error on stderr and exit 2.
fn token(file: Option<PathBuf>, uid: &str, pages: &[String], ttl: u64) -> ExitCode {
    match mint_token(file, uid, pages, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenecast token: {e}");
            ExitCode::from(2)
        }
    }
}

fn mint_token(
    file: Option<PathBuf>,
    uid: &str,
    pages: &[String],
    ttl: u64,
) -> Result<String, String> {
    use scenecast::push::Name;
    let settings =
        scenecast::Settings::load(file.as_deref()).map_err(|e| format!("config error: {e}"))?;
    let secret = &settings.auth.jwt_secret;
    if secret.is_empty() {
        return Err(
            "auth.jwt_secret is not set: set it in the config file (--config FILE) \
             or as SCENECAST__AUTH__JWT_SECRET"
                .into(),
        );
    }
    if ttl == 0 {
        return Err("--ttl must be at least 1".into());
    }
    let uid = Name::try_from(uid).map_err(|e| format!("--uid {e}"))?;
    let pages = pages
        .iter()
        .map(|p| Name::try_from(p.as_str()).map_err(|e| format!("--page {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    scenecast::auth::mint(secret, &uid, &pages, ttl, scenecast::auth::now())
}

fn serve(file: Option<PathBuf>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (settings, source) = match scenecast::Settings::load_with_source(file.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("scenecast: config error: {e}");
            return ExitCode::from(2);
        }
    };
    log::info!("scenecast {VERSION}: {source}");
    scenecast::net::raise_and_report();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("scenecast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenecast::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scenecast: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
