//! `mailer render`: a mail as the running mailer would send it (the same
//! settings, templates, checks, brand, zone and signature), printed or
//! written to a file instead of sent. Reaches no broker and no SMTP server.

use lettre::transport::stub::AsyncStubTransport;
use shared::{MailSend, Recipient};

use crate::config::{RenderArgs, Settings};
use crate::outlet::Outlet;
use crate::pipeline::Pipeline;

/// Renders the mail `args` describe and prints it (sender, recipient,
/// subject and text part) or writes it to `args.out`.
pub fn render(settings: &Settings, args: &RenderArgs) -> Result<(), anyhow::Error> {
    let pipeline = Pipeline::new(settings, Outlet::Stub(AsyncStubTransport::new_ok()))?;
    let data: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
    anyhow::ensure!(data.is_object(), "--data must be a JSON object");
    let to = Recipient {
        email: args.to.clone(),
        name: args.name.clone(),
    };
    let mail = MailSend::template("preview", to, &args.locale, &args.template, data);
    mail.validate()?;
    let rendered = pipeline.render(&mail)?;
    let message = pipeline.build(&mail, &rendered)?;
    let Some(out) = &args.out else {
        println!(
            "From: {}\nTo: {}\nSubject: {}\n\n{}",
            pipeline.from, args.to, rendered.subject, rendered.text
        );
        return Ok(());
    };
    let bytes = match out.extension().and_then(|e| e.to_str()) {
        Some("eml") => message.formatted(),
        Some("html") => rendered.html.into_bytes(),
        Some("txt") => rendered.text.into_bytes(),
        _ => anyhow::bail!("--out must end in .eml, .html or .txt"),
    };
    std::fs::write(out, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
