//! The OpenAPI 3.1 document for the admin API, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};

fn op(summary: &str, role: &str) -> Value {
    json!({
        "summary": summary,
        "security": [{ "bearer": [] }],
        "x-required-role": role,
        "responses": {
            "200": { "description": "OK" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "404": { "$ref": "#/components/responses/Error" }
        }
    })
}

fn with_body(mut v: Value, schema: &str) -> Value {
    v["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    });
    v
}

pub fn document() -> String {
    let app =
        json!({ "name": "app", "in": "path", "required": true, "schema": { "type": "string" } });
    let name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let instance_params: Vec<Value> = ["app_id", "group", "status", "version", "search", "after"]
        .iter()
        .map(|n| json!({ "name": n, "in": "query", "schema": { "type": "string" } }))
        .chain(
            ["silent_for_secs", "limit"]
                .iter()
                .map(|n| json!({ "name": n, "in": "query", "schema": { "type": "integer" } })),
        )
        .collect();
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fastpatch-server admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Applications, channels, groups with rollout policies, packages, floors, instances and the activity feed. Bearer tokens: admin (read/write) or viewer (read). The Omaha endpoint is POST /v1/update/ (XML)."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": {
                "Error": { "description": "Error", "content": { "application/json": { "schema": { "type": "object", "properties": { "error": { "type": "string" } } } } } }
            },
            "schemas": {
                "ExternalPackage": {
                    "type": "object",
                    "required": ["version", "url", "size", "sha1", "sha256"],
                    "properties": {
                        "version": { "type": "string" },
                        "arch": { "type": "string", "description": "amd64 (default), arm64; a board like amd64-usr is accepted" },
                        "url": { "type": "string", "description": "Codebase ending in / (then file_name is needed) or the payload's full URL" },
                        "file_name": { "type": "string" },
                        "size": { "type": "integer", "minimum": 1 },
                        "sha1": { "type": "string", "description": "hex or base64" },
                        "sha256": { "type": "string", "description": "hex or base64" },
                        "payload_ops": { "type": "string", "description": "The operations the payload uses, comma-separated (REPLACE,REPLACE_BZ for Flatcar's own payloads); a client is offered it only if it applies them. Unset: offered to every client" },
                        "extra_files": { "type": "array", "items": { "type": "object", "required": ["name", "size", "sha1", "sha256"],
                            "properties": { "name": { "type": "string" }, "size": { "type": "integer" }, "sha1": { "type": "string" }, "sha256": { "type": "string" } } } }
                    }
                },
                "Group": {
                    "type": "object",
                    "required": ["channel", "updates_enabled", "period_secs", "update_timeout_secs", "office_hours", "office_tz", "office_days", "office_start_minute", "office_end_minute", "safe_mode", "rollout_duration_secs"],
                    "properties": {
                        "app_id": { "type": "string" }, "name": { "type": "string" }, "channel": { "type": "string" },
                        "updates_enabled": { "type": "boolean" },
                        "max_updates_per_period": { "type": ["integer", "null"] }, "period_secs": { "type": "integer" },
                        "max_concurrent": { "type": ["integer", "null"] }, "update_timeout_secs": { "type": "integer" },
                        "office_hours": { "type": "boolean" }, "office_tz": { "type": "string", "description": "IANA time zone" },
                        "office_days": { "type": "integer", "description": "bit 0 = Monday … bit 6 = Sunday" },
                        "office_start_minute": { "type": "integer" }, "office_end_minute": { "type": "integer" },
                        "safe_mode": { "type": "boolean" },
                        "rollout_duration_secs": { "type": "integer" }, "rollout_started_at": { "type": "integer" },
                        "halted": { "type": "boolean" }, "halted_reason": { "type": ["string", "null"] }, "halted_at": { "type": ["integer", "null"] }
                    }
                },
                "NewApp": { "type": "object", "required": ["id", "name"], "properties": { "id": { "type": "string" }, "name": { "type": "string" } } },
                "SetChannel": { "type": "object", "required": ["version"], "properties": { "version": { "type": "string" } } },
                "Promote": { "type": "object", "required": ["from"], "properties": { "from": { "type": "string" } } },
                "Halt": { "type": "object", "properties": { "reason": { "type": "string" } } }
            }
        },
        "paths": {
            "/api/v1/apps": { "get": op("List applications", "viewer"), "post": with_body(op("Create an application", "admin"), "NewApp") },
            "/api/v1/apps/{app}/channels": { "parameters": [app], "get": op("List channels", "viewer") },
            "/api/v1/apps/{app}/channels/{name}": { "parameters": [app, name], "put": with_body(op("Point a channel at a published version", "admin"), "SetChannel") },
            "/api/v1/apps/{app}/channels/{name}/promote": { "parameters": [app, name], "post": with_body(op("Copy another channel's version to this one (same bytes)", "admin"), "Promote") },
            "/api/v1/apps/{app}/groups": { "parameters": [app], "get": op("List groups", "viewer") },
            "/api/v1/apps/{app}/groups/{name}": { "parameters": [app, name], "get": op("Get a group", "viewer"), "put": with_body(op("Create or update a group and its policy", "admin"), "Group") },
            "/api/v1/apps/{app}/groups/{name}/halt": { "parameters": [app, name], "post": with_body(op("Halt the group's rollout", "admin"), "Halt") },
            "/api/v1/apps/{app}/groups/{name}/resume": { "parameters": [app, name], "post": op("Resume the group's rollout", "admin") },
            "/api/v1/apps/{app}/groups/{name}/stats": { "parameters": [app, name], "get": op("Instance counts by status and version, grants", "viewer") },
            "/api/v1/apps/{app}/packages": {
                "parameters": [app],
                "get": op("List packages", "viewer"),
                "post": {
                    "summary": "Register a package hosted elsewhere (a CDN), with optional extra files; hashes in hex or base64",
                    "security": [{ "bearer": [] }], "x-required-role": "admin",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ExternalPackage" } } } },
                    "responses": { "200": { "description": "The registered package and its extra files" }, "400": { "$ref": "#/components/responses/Error" } }
                }
            },
            "/api/v1/apps/{app}/sync": { "parameters": [app], "get": op("The upstream syncer (fastpatch-server sync, serve --sync-upstream): per channel and arch its state (checking, downloading, verifying, publishing, up_to_date, held, failed), version, bytes done of total, last message", "viewer") },
            "/api/v1/apps/{app}/variants": { "parameters": [app], "get": op("Second payloads of packages: the same image with other operations (payload_ops), e.g. a Flatcar-compatible payload next to a zstd one; size, hashes, bytes served", "viewer") },
            "/api/v1/apps/{app}/deltas": { "parameters": [app], "get": op("Delta payloads the server made (state ready, not_smaller or failed; source and target versions; size; bytes served)", "viewer") },
            "/api/v1/apps/{app}/packages/{version}/{arch}": {
                "parameters": [app,
                    { "name": "version", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "arch", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "file_name", "in": "query", "schema": { "type": "string" } }],
                "get": op("A package and its extra files", "viewer"),
                "put": {
                    "summary": "Upload and publish a payload (body = payload bytes); hashes computed by the server",
                    "security": [{ "bearer": [] }], "x-required-role": "admin",
                    "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": { "200": { "description": "The registered package" }, "400": { "$ref": "#/components/responses/Error" } }
                }
            },
            "/api/v1/apps/{app}/floors": { "parameters": [app], "get": op("List floor versions (mandatory intermediate versions)", "viewer") },
            "/api/v1/apps/{app}/floors/{version}": {
                "parameters": [app, { "name": "version", "in": "path", "required": true, "schema": { "type": "string" } }],
                "put": op("Add a floor", "admin"), "delete": op("Remove a floor", "admin")
            },
            "/api/v1/instances": {
                "get": {
                    "summary": "List instances (keyset pagination by machine id)",
                    "security": [{ "bearer": [] }], "x-required-role": "viewer",
                    "parameters": instance_params,
                    "responses": { "200": { "description": "{ instances: [...], next_after: string|null }" } }
                }
            },
            "/api/v1/apps/{app}/instances/{machine}": {
                "parameters": [app, { "name": "machine", "in": "path", "required": true, "schema": { "type": "string" } }],
                "get": op("An instance with its status history and events", "viewer")
            },
            "/api/v1/activity": {
                "get": {
                    "summary": "Activity feed, newest first (keyset: before=<id>)",
                    "security": [{ "bearer": [] }], "x-required-role": "viewer",
                    "parameters": [{ "name": "before", "in": "query", "schema": { "type": "integer" } }, { "name": "limit", "in": "query", "schema": { "type": "integer" } }],
                    "responses": { "200": { "description": "OK" } }
                }
            }
        }
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
