#!/usr/bin/env bash
# Starts a throwaway Synapse on 127.0.0.1 for the bridge tests: SQLite, no federation, open
# registration (test users), the Cairn bridge's appservice registered, generous rate limits.
#   usage: run.sh PYTHON DIR PORT REGISTRATION SERVER_NAME
# Writes DIR/homeserver.yaml (and keys), then becomes Synapse (exec: killing this process
# kills Synapse).
set -euo pipefail
PY="$1"; DIR="$2"; PORT="$3"; REG="$4"; NAME="$5"
mkdir -p "$DIR/media"
secret() { "$PY" -c "import secrets; print(secrets.token_hex(24))"; }
# Kept across restarts: new secrets would log every test user out.
if [ ! -f "$DIR/homeserver.yaml" ]; then
cat > "$DIR/homeserver.yaml" <<YAML
server_name: "$NAME"
pid_file: "$DIR/homeserver.pid"
public_baseurl: "http://127.0.0.1:$PORT/"
listeners:
  - port: $PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "$DIR/homeserver.db"
media_store_path: "$DIR/media"
signing_key_path: "$DIR/signing.key"
log_config: "$DIR/log.yaml"
report_stats: false
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "$(secret)"
macaroon_secret_key: "$(secret)"
form_secret: "$(secret)"
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
presence:
  enabled: false
app_service_config_files: ["$REG"]
rc_message: {per_second: 1000, burst_count: 1000}
rc_registration: {per_second: 1000, burst_count: 1000}
rc_login:
  address: {per_second: 1000, burst_count: 1000}
  account: {per_second: 1000, burst_count: 1000}
  failed_attempts: {per_second: 1000, burst_count: 1000}
rc_joins:
  local: {per_second: 1000, burst_count: 1000}
  remote: {per_second: 1000, burst_count: 1000}
rc_invites:
  per_room: {per_second: 1000, burst_count: 1000}
  per_user: {per_second: 1000, burst_count: 1000}
YAML
fi
cat > "$DIR/log.yaml" <<YAML
version: 1
formatters:
  precise: {format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'}
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: "$DIR/homeserver.log"}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
YAML
if [ ! -f "$DIR/signing.key" ]; then
  "$PY" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" --generate-keys >/dev/null
fi
exec "$PY" -m synapse.app.homeserver -c "$DIR/homeserver.yaml"
