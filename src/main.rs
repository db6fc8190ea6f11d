use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use django_migrate_webhook::cli::{
    CertsArgs, CheckArgs, CheckOutput, Cli, Command, InjectArgs, InstallCodeArgs, PlanArgs,
    PlanOutput, PolicyArgs, RemoveInjectionArgs, ServeArgs, StatusArgs, StatusOutput, UninjectArgs,
};
use django_migrate_webhook::plan::Outcome;
use django_migrate_webhook::plan_job::PlanJobOptions;
use django_migrate_webhook::plan_run::{self, Made};
use django_migrate_webhook::{
    certs, check, injected, policy, preview, process, removal, status, telemetry,
};

/// The webhook's answer is built from many small JSON values; mimalloc serves those
/// allocations faster than glibc's malloc (see the book's "Performance and scale"). It is built
/// with `no_thp`: transparent huge pages would add ~8 MiB of RSS under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => return run_plan(args),
        Command::Status(args) => return show_status(args),
        Command::Check(args) => return run_check(args),
        Command::Serve(args) => serve(*args),
        Command::Inject(args) => inject(args),
        Command::Uninject(args) => uninject(&args),
        Command::RemoveInjection(args) => remove_injection(&args),
        Command::Certs(args) => make_certs(&args),
        Command::InstallCode(args) => install_code(&args),
        Command::Policy(args) => print_policy(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    let options = process::ServeOptions::from(args);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(process::run(&options))?;
    Ok(())
}

/// `policy`: the admission policies, as one YAML stream or one JSON List.
fn print_policy(args: PolicyArgs) -> anyhow::Result<()> {
    let options = policy::PolicyOptions {
        name: args.name,
        image: args.code_image.into(),
        exclude_namespaces: args.exclude_namespaces,
        failure_policy: args.failure_policy,
        delivery_placeholder: None,
    };
    let objects = if args.without_bindings {
        policy::policies(&options)
    } else {
        policy::objects(&options)
    };
    let text = match args.output {
        preview::OutputFormat::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_string_pretty(&list)? + "\n"
        }
        preview::OutputFormat::Yaml => {
            let mut out = String::new();
            for o in &objects {
                out.push_str("---\n");
                out.push_str(&serde_yaml_ng::to_string(o)?);
            }
            out
        }
    };
    print!("{text}");
    Ok(())
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let input = read_input(&args.manifests.file)?;
    let image = args.code_image.into();
    let result = if args.contract_job {
        preview::contract_jobs(&input, args.manifests.output, &image)?
    } else if args.plan_job {
        let options = PlanJobOptions {
            image: args.image.as_deref(),
            ..PlanJobOptions::default()
        };
        preview::plan_jobs(&input, args.manifests.output, &image, &options)?
    } else {
        preview::inject(&input, args.manifests.output, &image)?
    };
    for w in &result.warnings {
        eprintln!("Warning: {w}");
    }
    print!("{}", result.output);
    Ok(())
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

fn uninject(args: &UninjectArgs) -> anyhow::Result<()> {
    let result = preview::uninject(&read_input(&args.manifests.file)?, args.manifests.output)?;
    eprintln!(
        "uninjected {} Deployment(s); the label django-migrate.io/inject is \"false\" on each",
        result.mutated
    );
    print!("{}", result.output);
    Ok(())
}

fn remove_injection(args: &RemoveInjectionArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
            removal::remove_all(&client, args.timeout).await?;
            Ok(())
        })
}

fn make_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let generated = certs::generate(&args.dns, &args.ip)?;
    certs::write(&args.out, &generated)?;
    println!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key",
        args.out.display()
    );
    Ok(())
}

fn install_code(args: &InstallCodeArgs) -> anyhow::Result<()> {
    let path = injected::install(&args.dir).with_context(|| {
        format!(
            "cannot write the migration program into {}",
            args.dir.display()
        )
    })?;
    println!(
        "django-migrate-webhook {}: wrote {} ({} bytes)",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        injected::artifact().len()
    );
    Ok(())
}

/// Runs `work` with a client of the user's kubeconfig (its current context, or `context`),
/// like kubectl, on a runtime of its own.
fn on_cluster<T>(
    context: Option<String>,
    work: impl AsyncFnOnce(kube::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let options = kube::config::KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .context("cannot read the kubeconfig")?;
        let client = kube::Client::try_from(config)
            .context("cannot build a Kubernetes client from the kubeconfig")?;
        work(client).await
    })
}

/// `status`: 0 all good, 1 a Deployment not injected or a step failed, 3 the cluster could
/// not be read.
fn show_status(args: StatusArgs) -> ExitCode {
    let scope = if args.all_namespaces {
        status::Scope::AllNamespaces
    } else {
        status::Scope::Namespace(args.namespace)
    };
    let result = on_cluster(args.context, async |client| {
        Ok(status::collect(&client, &scope, args.deployment.as_ref()).await?)
    });
    let statuses = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(3);
        }
    };
    let printed = match args.output {
        StatusOutput::Table => Ok(status::table(&statuses)),
        StatusOutput::Json => serde_json::to_string_pretty(&statuses)
            .map(|s| s + "\n")
            .map_err(anyhow::Error::from),
        StatusOutput::Yaml => serde_yaml_ng::to_string(&statuses).map_err(anyhow::Error::from),
    };
    match printed {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(3);
        }
    }
    if statuses.iter().any(status::DeploymentStatus::has_problem) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `check`: 0 every check passed, 1 a check failed, 3 the cluster could not be read.
fn run_check(args: CheckArgs) -> ExitCode {
    let result = on_cluster(args.context, async |client| {
        let report = if args.pre {
            let options = check::PreOptions {
                namespace: args
                    .namespace
                    .unwrap_or_else(|| "django-migrate-system".to_owned()),
                mode: args.mode,
                cert_manager: args.cert_manager,
                contract_jobs: args.contract_jobs,
                code_delivery: args.code_delivery,
            };
            check::pre(&client, &options).await?
        } else {
            let options = check::InstalledOptions {
                namespace: args.namespace,
                probe_namespace: args.probe_namespace,
            };
            check::installed(&client, &options).await?
        };
        Ok(report)
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(3);
        }
    };
    match args.output {
        CheckOutput::Table => print!("{}", report.text()),
        CheckOutput::Json => match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(3);
            }
        },
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `plan`: 0 the rollout would pass, 5 it would be held back or blocked, 1 the plan could
/// not be made, 3 the cluster could not be read or the Job not created or read.
fn run_plan(args: PlanArgs) -> ExitCode {
    let exit = |o: Outcome| ExitCode::from(o.code());
    let manifest = match args.manifest.as_deref().map(read_input).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit(Outcome::NotMade);
        }
    };
    let release = match (&args.image, &args.manifest) {
        (Some(image), _) => format!(", image {image}"),
        (None, Some(file)) => format!(", as in {file}"),
        (None, None) => String::new(),
    };
    let name = args.deployment.clone();
    let options = plan_run::PlanOptions {
        deployment: args.deployment,
        namespace: args.namespace,
        image: args.image,
        manifest,
        code_image: args.code_image.into(),
        timeout: args.timeout,
        keep: args.keep,
    };
    let result = on_cluster(args.context, async |client| {
        Ok(plan_run::run(&client, &options, &mut |note| eprintln!("{note}")).await)
    });
    let planned = match result {
        Ok(Ok(planned)) => planned,
        Ok(Err(e)) => {
            let outcome = e.outcome();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            return exit(outcome);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit(Outcome::Cluster);
        }
    };
    let outcome = planned.made.outcome();
    match &planned.made {
        Made::Report { report, line, .. } => {
            let about = format!("deployment {}/{name}{release}", planned.namespace);
            let text = match args.output {
                PlanOutput::Table => Ok(report.table(&about)),
                PlanOutput::Markdown => Ok(report.markdown(&about)),
                PlanOutput::Json => django_migrate_webhook::plan::pretty_json(line),
            };
            match text {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("error: the step's report: {e}");
                    return exit(Outcome::NotMade);
                }
            }
        }
        Made::Summary { summary, why } if outcome == Outcome::NotMade => eprintln!(
            "error: the plan could not be made: {} (result {}; {why})",
            summary.message, summary.result
        ),
        Made::Summary { summary, why } => eprintln!(
            "{}: {} (no full report: {why})",
            summary.result, summary.message
        ),
    }
    exit(outcome)
}
