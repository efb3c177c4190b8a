//! `cardvm lsp`: a language server for `.cvs` and `.casm` over stdio.
//!
//! It speaks the Language Server Protocol (JSON-RPC with `Content-Length` framing):
//! diagnostics from the compiler and its lints on open, change and save; hover (an
//! instruction's reference row, a builtin, a declaration with its type or value, a
//! variable's first assignment); go to definition (routines, constants, failure codes,
//! inputs, outputs, variables, labels, `include` paths). Documents are checked from the
//! editor's text; their includes are read from disk inside the include root, as
//! `cardvm asm` reads them. Malformed messages get an error response (or are dropped,
//! when they are notifications); the server ends at `exit` or at the end of its input.

mod analysis;
mod outline;
mod transport;

use analysis::Doc;
use clap::Args;
use lsp_server::{ErrorCode, Message, Notification, Request, RequestId, Response};
use lsp_types::notification::{self as note, Notification as _};
use lsp_types::request::{self as req, Request as _};
use lsp_types::{
    GotoDefinitionResponse, Hover, HoverContents, HoverProviderCapability, InitializeResult,
    Location, MarkupContent, MarkupKind, OneOf, PublishDiagnosticsParams, SaveOptions,
    ServerCapabilities, ServerInfo, TextDocumentContentChangeEvent, TextDocumentSyncCapability,
    TextDocumentSyncKind, TextDocumentSyncOptions, TextDocumentSyncSaveOptions, Uri,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use transport::Incoming;

/// Arguments of `cardvm lsp` (none: it speaks LSP on stdin/stdout).
#[derive(Args, Debug)]
pub struct LspArgs {
    /// Accepted for editors that pass it; stdio is the only transport.
    #[arg(long)]
    stdio: bool,
}

/// The server's state.
#[derive(Default)]
struct Server {
    initialized: bool,
    shutdown: bool,
    docs: BTreeMap<String, Doc>,
    /// Per document: the other URIs (included files) it published diagnostics on.
    published: BTreeMap<String, BTreeSet<String>>,
    /// Per `.cvs` document: the compiler's types from its last check that compiled.
    types: BTreeMap<String, Vec<analysis::Typed>>,
    out: Vec<Message>,
}

/// What to do after a message.
enum Flow {
    Continue,
    Exit(super::CliResult),
}

/// `cardvm lsp`: serves stdin/stdout until `exit` (exit code 0 after `shutdown`).
pub fn run(_args: LspArgs) -> super::CliResult {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let stdout = io::stdout();
    let mut output = stdout.lock();
    serve(&mut input, &mut output)
}

/// Serves one client over `input`/`output`.
fn serve(input: &mut dyn io::BufRead, output: &mut dyn Write) -> super::CliResult {
    let mut server = Server::default();
    let io_err = |e: io::Error| format!("lsp: {e}");
    loop {
        let flow = match transport::read(input).map_err(io_err)? {
            Incoming::Eof => {
                return if server.shutdown {
                    Ok(())
                } else {
                    Err(String::from(
                        "lsp: the client closed the connection before shutdown",
                    ))
                };
            }
            Incoming::Malformed(why, Some(id)) => {
                server.reply_err(id, ErrorCode::InvalidRequest, why);
                Flow::Continue
            }
            Incoming::Malformed(why, None) => {
                transport::write_null_id_error(output, ErrorCode::ParseError as i32, &why)
                    .map_err(io_err)?;
                Flow::Continue
            }
            Incoming::Message(msg) => {
                let id = match &msg {
                    Message::Request(r) => Some(r.id.clone()),
                    _ => None,
                };
                match catch_unwind(AssertUnwindSafe(|| server.handle(msg))) {
                    Ok(flow) => flow,
                    Err(_) => {
                        if let Some(id) = id {
                            server.reply_err(id, ErrorCode::InternalError, "internal error".into());
                        }
                        Flow::Continue
                    }
                }
            }
        };
        for m in server.out.drain(..) {
            transport::write(output, &m).map_err(io_err)?;
        }
        if let Flow::Exit(r) = flow {
            return r;
        }
    }
}

fn params<P: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<P, String> {
    serde_json::from_value(v).map_err(|e| format!("invalid params: {e}"))
}

impl Server {
    fn reply_ok(&mut self, id: RequestId, result: impl serde::Serialize) {
        let value = serde_json::to_value(result).unwrap_or(serde_json::Value::Null);
        self.out
            .push(Message::Response(Response::new_ok(id, value)));
    }

    fn reply_err(&mut self, id: RequestId, code: ErrorCode, message: String) {
        self.out.push(Message::Response(Response::new_err(
            id,
            code as i32,
            message,
        )));
    }

    fn handle(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Request(r) => {
                self.request(r);
                Flow::Continue
            }
            Message::Notification(n) => self.notification(n),
            // The server sends no requests, so it expects no responses.
            Message::Response(_) => Flow::Continue,
        }
    }

    fn request(&mut self, r: Request) {
        let Request {
            id,
            method,
            params: p,
        } = r;
        if method == req::Initialize::METHOD {
            if self.initialized {
                return self.reply_err(id, ErrorCode::InvalidRequest, "already initialized".into());
            }
            self.initialized = true;
            return self.reply_ok(id, capabilities());
        }
        if !self.initialized {
            return self.reply_err(
                id,
                ErrorCode::ServerNotInitialized,
                "not initialized".into(),
            );
        }
        if self.shutdown {
            return self.reply_err(id, ErrorCode::InvalidRequest, "shutting down".into());
        }
        match method.as_str() {
            req::Shutdown::METHOD => {
                self.shutdown = true;
                self.reply_ok(id, serde_json::Value::Null);
            }
            req::HoverRequest::METHOD => match params::<lsp_types::HoverParams>(p) {
                Ok(h) => {
                    let tdp = h.text_document_position_params;
                    let hover = self
                        .docs
                        .get(tdp.text_document.uri.as_str())
                        .and_then(|d| {
                            let types = self.types.get(d.uri.as_str());
                            analysis::hover(d, tdp.position, types.map_or(&[], Vec::as_slice))
                        })
                        .map(|(value, range)| Hover {
                            contents: HoverContents::Markup(MarkupContent {
                                kind: MarkupKind::Markdown,
                                value,
                            }),
                            range: Some(range),
                        });
                    self.reply_ok(id, hover);
                }
                Err(e) => self.reply_err(id, ErrorCode::InvalidParams, e),
            },
            req::GotoDefinition::METHOD => match params::<lsp_types::GotoDefinitionParams>(p) {
                Ok(g) => {
                    let tdp = g.text_document_position_params;
                    let loc = self
                        .docs
                        .get(tdp.text_document.uri.as_str())
                        .and_then(|d| analysis::definition(d, tdp.position))
                        .and_then(|(uri, range)| {
                            Some(GotoDefinitionResponse::Scalar(Location {
                                uri: Uri::from_str(&uri).ok()?,
                                range,
                            }))
                        });
                    self.reply_ok(id, loc);
                }
                Err(e) => self.reply_err(id, ErrorCode::InvalidParams, e),
            },
            _ => self.reply_err(
                id,
                ErrorCode::MethodNotFound,
                format!("unknown method {method}"),
            ),
        }
    }

    fn notification(&mut self, n: Notification) -> Flow {
        let Notification { method, params: p } = n;
        if method == note::Exit::METHOD {
            return Flow::Exit(if self.shutdown {
                Ok(())
            } else {
                Err(String::from("lsp: exit before shutdown"))
            });
        }
        if !self.initialized {
            return Flow::Continue;
        }
        // A notification with bad params is dropped: there is no one to answer.
        match method.as_str() {
            note::DidOpenTextDocument::METHOD => {
                if let Ok(o) = params::<lsp_types::DidOpenTextDocumentParams>(p) {
                    let uri = o.text_document.uri.as_str().to_string();
                    self.docs
                        .insert(uri.clone(), Doc::new(uri.clone(), o.text_document.text));
                    self.check_all(&uri);
                }
            }
            note::DidChangeTextDocument::METHOD => {
                if let Ok(c) = params::<lsp_types::DidChangeTextDocumentParams>(p) {
                    let uri = c.text_document.uri.as_str().to_string();
                    if let Some(doc) = self.docs.get_mut(&uri) {
                        for change in c.content_changes {
                            apply_change(&mut doc.text, change);
                        }
                        self.check_all(&uri);
                    }
                }
            }
            note::DidSaveTextDocument::METHOD => {
                if let Ok(s) = params::<lsp_types::DidSaveTextDocumentParams>(p) {
                    let uri = s.text_document.uri.as_str().to_string();
                    if let Some(doc) = self.docs.get_mut(&uri) {
                        if let Some(text) = s.text {
                            doc.text = text;
                        }
                        self.check_all(&uri);
                    }
                }
            }
            note::DidCloseTextDocument::METHOD => {
                if let Ok(c) = params::<lsp_types::DidCloseTextDocumentParams>(p) {
                    let uri = c.text_document.uri.as_str().to_string();
                    self.docs.remove(&uri);
                    self.types.remove(&uri);
                    let others = self.published.remove(&uri).unwrap_or_default();
                    for u in std::iter::once(uri).chain(others) {
                        self.publish(&u, Vec::new());
                    }
                    self.check_all("");
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    /// Checks `first`, then every other open document (one may include another, and
    /// includes are read from the editor's text).
    fn check_all(&mut self, first: &str) {
        self.check(first);
        let others: Vec<String> = self.docs.keys().filter(|u| *u != first).cloned().collect();
        for u in others {
            self.check(&u);
        }
    }

    /// Checks a document and publishes its diagnostics (and clears those it published
    /// before on files it no longer reports on).
    fn check(&mut self, uri: &str) {
        let Some(doc) = self.docs.get(uri) else {
            return;
        };
        let open: Vec<&Doc> = self.docs.values().filter(|d| d.uri != uri).collect();
        let checked = analysis::check(doc, &open);
        if let Some(types) = checked.types {
            self.types.insert(uri.to_string(), types);
        }
        let results = checked.published;
        let before = self.published.remove(uri).unwrap_or_default();
        let mut now = BTreeSet::new();
        for (u, diags) in results {
            // Another open document's diagnostics are its own check's.
            if u != uri && self.docs.contains_key(&u) {
                continue;
            }
            if u != uri {
                now.insert(u.clone());
            }
            self.publish(&u, diags);
        }
        for stale in before.difference(&now) {
            if !self.docs.contains_key(stale) {
                self.publish(stale, Vec::new());
            }
        }
        self.published.insert(uri.to_string(), now);
    }

    fn publish(&mut self, uri: &str, diagnostics: Vec<lsp_types::Diagnostic>) {
        let Ok(uri) = Uri::from_str(uri) else {
            return;
        };
        let params = PublishDiagnosticsParams {
            uri,
            diagnostics,
            version: None,
        };
        if let Ok(v) = serde_json::to_value(params) {
            self.out.push(Message::Notification(Notification::new(
                note::PublishDiagnostics::METHOD.to_string(),
                v,
            )));
        }
    }
}

fn capabilities() -> InitializeResult {
    InitializeResult {
        capabilities: ServerCapabilities {
            text_document_sync: Some(TextDocumentSyncCapability::Options(
                TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(TextDocumentSyncKind::FULL),
                    save: Some(TextDocumentSyncSaveOptions::SaveOptions(SaveOptions {
                        include_text: Some(true),
                    })),
                    ..TextDocumentSyncOptions::default()
                },
            )),
            hover_provider: Some(HoverProviderCapability::Simple(true)),
            definition_provider: Some(OneOf::Left(true)),
            ..ServerCapabilities::default()
        },
        server_info: Some(ServerInfo {
            name: String::from("cardvm"),
            version: Some(String::from(env!("CARGO_PKG_VERSION"))),
        }),
    }
}

/// The byte offset of an LSP position (UTF-16 columns) in `text`, clamped to the text.
fn offset(text: &str, pos: lsp_types::Position) -> usize {
    let mut line_start = 0;
    for _ in 0..pos.line {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let mut col = 0u32;
    for (i, c) in text[line_start..line_end].char_indices() {
        if col >= pos.character {
            return line_start + i;
        }
        col += c.len_utf16() as u32;
    }
    line_end
}

/// Applies one change: a whole new text, or a range replaced (clients that send
/// incremental changes despite the capability).
fn apply_change(text: &mut String, change: TextDocumentContentChangeEvent) {
    match change.range {
        None => *text = change.text,
        Some(r) => {
            let a = offset(text, r.start);
            let b = offset(text, r.end).max(a);
            text.replace_range(a..b, &change.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_types::{Position, Range};

    #[test]
    fn incremental_changes_apply_by_utf16_columns() {
        let mut t = String::from("a é𝄞b\nsecond\n");
        let change = |r: Option<Range>, s: &str| TextDocumentContentChangeEvent {
            range: r,
            range_length: None,
            text: s.into(),
        };
        let r = Range::new(Position::new(0, 5), Position::new(0, 6));
        apply_change(&mut t, change(Some(r), "X"));
        assert_eq!(t, "a é𝄞X\nsecond\n");
        let r = Range::new(Position::new(5, 0), Position::new(9, 9));
        apply_change(&mut t, change(Some(r), "!"));
        assert_eq!(t, "a é𝄞X\nsecond\n!");
        apply_change(&mut t, change(None, "new"));
        assert_eq!(t, "new");
    }

    #[test]
    fn a_session_with_garbage_ends_cleanly() {
        let frame = |body: &str| format!("Content-Length: {}\r\n\r\n{body}", body.len());
        let mut input = String::new();
        input += &frame(r#"{"jsonrpc":"2.0","id":1,"method":"hover","params":{}}"#);
        input += &frame(
            r#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"capabilities":{}}}"#,
        );
        input += &frame("][");
        input +=
            &frame(r#"{"jsonrpc":"2.0","id":3,"method":"textDocument/hover","params":{"x":1}}"#);
        input += &frame(r#"{"jsonrpc":"2.0","method":"textDocument/didOpen","params":7}"#);
        input += &frame(r#"{"jsonrpc":"2.0","id":4,"method":"shutdown"}"#);
        input += &frame(r#"{"jsonrpc":"2.0","method":"exit"}"#);
        let mut out = Vec::new();
        let r = serve(&mut io::BufReader::new(input.as_bytes()), &mut out);
        assert_eq!(r, Ok(()));
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.contains(r#""id":1,"error":{"code":-32002"#), "{out}");
        assert!(out.contains(r#""id":null,"error":{"code":-32700"#), "{out}");
        assert!(out.contains(r#""id":3,"error":{"code":-32602"#), "{out}");
        assert!(out.contains(r#""id":4,"result":null"#), "{out}");
    }
}
