//! `cardvm lsp`, run as the built binary and spoken to over stdio as an editor would:
//! `Content-Length` framed JSON-RPC, every read bounded by a timeout so a hung server
//! fails the test instead of hanging it.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-lsp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("common")).unwrap();
    dir
}

fn uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// A client: the server process, its stdin, and the messages it wrote.
struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
    /// Notifications read while waiting for a response.
    pending: Vec<Value>,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cardvm"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starts cardvm lsp");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; len.expect("Content-Length")];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&body).expect("JSON from the server");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            rx,
            next_id: 0,
            pending: Vec::new(),
        };
        let init = c.request("initialize", json!({ "capabilities": {} }));
        assert_eq!(init["capabilities"]["hoverProvider"], json!(true), "{init}");
        assert_eq!(
            init["capabilities"]["definitionProvider"],
            json!(true),
            "{init}"
        );
        c.notify("initialized", json!({}));
        c
    }

    fn send_raw(&mut self, body: &[u8]) {
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(body).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, v: Value) {
        self.send_raw(v.to_string().as_bytes());
    }

    fn recv(&mut self) -> Value {
        self.rx
            .recv_timeout(TIMEOUT)
            .expect("the server answers within the timeout")
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// The whole response to a request (result or error).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let m = self.recv();
            if m["id"] == json!(id) {
                return m;
            }
            self.pending.push(m);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let is_it = |m: &Value| {
            m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
        };
        if let Some(i) = self.pending.iter().position(is_it) {
            let m = self.pending.remove(i);
            return m["params"]["diagnostics"].as_array().unwrap().clone();
        }
        loop {
            let m = self.recv();
            if is_it(&m) {
                return m["params"]["diagnostics"].as_array().unwrap().clone();
            }
            self.pending.push(m);
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({ "textDocument": { "uri": uri, "languageId": "cardvm", "version": 1, "text": text } }),
        );
    }

    fn change(&mut self, uri: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": uri, "version": version }, "contentChanges": [{ "text": text }] }),
        );
    }

    fn at(&mut self, method: &str, uri: &str, line: u32, character: u32) -> Value {
        self.request(
            method,
            json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": character } }),
        )
    }

    /// `shutdown`, `exit`: the server ends with code 0.
    fn finish(mut self) {
        assert_eq!(self.request("shutdown", Value::Null), Value::Null);
        self.notify("exit", Value::Null);
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A failed test must not leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LIB: &str = "\
; shared routines
routine select() {
    apdu [00 A4 04 00 02 3F 00] else fail 2
}
";

const BROKEN: &str = "\
city 731
script 1
version 1
input amount: u32, terminal: bytes[6]
include \"common/lib.cvs\"
const LIMIT = 1000
select()
x = amount +
done
";

const FIXED: &str = "\
city 731
script 1
version 1
input amount: u32, terminal: bytes[6]
include \"common/lib.cvs\"
const LIMIT = 1000
select()
x = amount + 1
if x > LIMIT fail 4
apdu 80 50 00 02 [{terminal}] else fail 3
done
";

fn hover_text(h: &Value) -> String {
    h["contents"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn lsp_session_diagnostics_hover_definition() {
    let dir = tmp_dir("session");
    std::fs::write(dir.join("common/lib.cvs"), LIB).unwrap();
    let main = dir.join("main.cvs");
    std::fs::write(&main, BROKEN).unwrap();
    let main_uri = uri(&main);
    let mut c = Client::start();

    // An error: its line, its column, its message.
    c.open(&main_uri, BROKEN);
    let d = c.diagnostics(&main_uri);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["severity"], 1, "{d:?}");
    assert_eq!(
        d[0]["range"]["start"],
        json!({ "line": 7, "character": 12 }),
        "{d:?}"
    );
    assert!(
        d[0]["message"]
            .as_str()
            .unwrap()
            .contains("expected an expression"),
        "{d:?}"
    );

    // Before the program ever compiled, a variable's type is what its assignment reads.
    let text = hover_text(&c.at("textDocument/hover", &main_uri, 7, 0));
    assert!(
        text.contains("variable `x`: an integer (as its first assignment reads"),
        "{text}"
    );

    // Fixed: no diagnostics.
    c.change(&main_uri, 2, FIXED);
    assert_eq!(c.diagnostics(&main_uri), Vec::<Value>::new());

    // An input nobody reads: the lint, as a warning with its name.
    let linted = FIXED.replace("terminal: bytes[6]", "terminal: bytes[6], spare: u8");
    c.change(&main_uri, 3, &linted);
    let d = c.diagnostics(&main_uri);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["severity"], 2, "{d:?}");
    assert_eq!(d[0]["code"], "unused-input", "{d:?}");
    assert_eq!(d[0]["range"]["start"]["line"], 3, "{d:?}");
    c.change(&main_uri, 4, FIXED);
    assert_eq!(c.diagnostics(&main_uri), Vec::<Value>::new());

    // Hover: an input's type, where `amount` is read (line 8: `x = amount + 1`).
    let h = c.at("textDocument/hover", &main_uri, 7, 6);
    let text = hover_text(&h);
    assert!(text.contains("input `amount`: `u32`"), "{text}");
    assert_eq!(
        h["range"]["start"],
        json!({ "line": 7, "character": 4 }),
        "{h}"
    );
    let text = hover_text(&c.at("textDocument/hover", &main_uri, 8, 3));
    // A variable: the compiler's type for it, and its first assignment.
    assert!(text.contains("variable `x`: `int` (an integer)"), "{text}");
    assert!(text.contains("line 8"), "{text}");
    // A constant and a builtin statement.
    let text = hover_text(&c.at("textDocument/hover", &main_uri, 8, 9));
    assert!(text.contains("const `LIMIT` = `1000`"), "{text}");
    let text = hover_text(&c.at("textDocument/hover", &main_uri, 9, 1));
    assert!(text.contains("Compiles to `apdu`"), "{text}");
    // Nothing on a header keyword.
    assert_eq!(c.at("textDocument/hover", &main_uri, 2, 7), Value::Null);

    // Go to definition: a routine call to its declaration in the included file.
    let lib_uri = uri(&dir.join("common/lib.cvs"));
    let def = c.at("textDocument/definition", &main_uri, 6, 2);
    assert_eq!(def["uri"], json!(lib_uri), "{def}");
    assert_eq!(
        def["range"],
        json!({ "start": { "line": 1, "character": 8 }, "end": { "line": 1, "character": 14 } }),
        "{def}"
    );
    // A constant, in the same file.
    let def = c.at("textDocument/definition", &main_uri, 8, 10);
    assert_eq!(def["uri"], json!(main_uri), "{def}");
    assert_eq!(
        def["range"]["start"],
        json!({ "line": 5, "character": 6 }),
        "{def}"
    );
    // An include path, to the file.
    let def = c.at("textDocument/definition", &main_uri, 4, 12);
    assert_eq!(def["uri"], json!(lib_uri), "{def}");

    // `.casm`: hover on a mnemonic gives the instruction table's doc.
    let casm = dir.join("probe.casm");
    let casm_uri = uri(&casm);
    let casm_text = ".city 1\n.script 1\n.version 1\nstart:\n    ldc   r0, [00 A4 04 00]\n    apdu  r1, r0\n    expect 9000, 1\n    halt\n";
    c.open(&casm_uri, casm_text);
    let d = c.diagnostics(&casm_uri);
    assert!(d.iter().all(|d| d["severity"] != 1), "{d:?}");
    let text = hover_text(&c.at("textDocument/hover", &casm_uri, 5, 6));
    let apdu = cardvm::isa::Opcode::from_mnemonic("apdu").unwrap();
    assert!(text.contains(apdu.summary().trim()), "{text}");
    assert!(text.contains("sends APDU"), "{text}");
    // Another mnemonic.
    let text = hover_text(&c.at("textDocument/hover", &casm_uri, 4, 5));
    assert!(text.contains("dst = constant"), "{text}");

    // Malformed input: an error response, and the server carries on.
    c.send_raw(b"{this is not json");
    let m = c.recv();
    assert_eq!(m["id"], Value::Null, "{m}");
    assert_eq!(m["error"]["code"], -32700, "{m}");
    let r = c.call("textDocument/hover", json!({ "nonsense": true }));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = c.call("cardvm/unknown", Value::Null);
    assert_eq!(r["error"]["code"], -32601, "{r}");
    // A position past the end of the document is no answer, not a crash.
    assert_eq!(c.at("textDocument/hover", &main_uri, 999, 999), Value::Null);

    c.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lsp_error_in_an_included_file_is_shown_there_and_on_the_include() {
    let dir = tmp_dir("include");
    std::fs::write(
        dir.join("common/lib.cvs"),
        "routine select() {\n    x = [01 +\n}\n",
    )
    .unwrap();
    let main = dir.join("main.cvs");
    let main_uri = uri(&main);
    let lib_uri = uri(&dir.join("common/lib.cvs"));
    let text = "city 1\nscript 1\nversion 1\ninclude \"common/lib.cvs\"\nselect()\ndone\n";
    let mut c = Client::start();
    c.open(&main_uri, text);
    let on_main = c.diagnostics(&main_uri);
    assert_eq!(on_main.len(), 1, "{on_main:?}");
    assert_eq!(on_main[0]["range"]["start"]["line"], 3, "{on_main:?}");
    assert!(
        on_main[0]["message"]
            .as_str()
            .unwrap()
            .contains("lib.cvs:2:"),
        "{on_main:?}"
    );
    let on_lib = c.diagnostics(&lib_uri);
    assert_eq!(on_lib.len(), 1, "{on_lib:?}");
    assert_eq!(on_lib[0]["range"]["start"]["line"], 1, "{on_lib:?}");
    // Without the include, both clear.
    c.change(&main_uri, 2, "city 1\nscript 1\nversion 1\ndone\n");
    assert_eq!(c.diagnostics(&main_uri), Vec::<Value>::new());
    assert_eq!(c.diagnostics(&lib_uri), Vec::<Value>::new());
    c.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lsp_exit_without_shutdown_is_an_error_exit() {
    let mut c = Client::start();
    c.notify("exit", Value::Null);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
}

#[test]
fn lsp_a_fragment_is_checked_as_the_file_that_includes_it() {
    let dir = tmp_dir("fragment");
    let lib = dir.join("common/lib.cvs");
    let lib_text = "routine select(aid) {\n    apdu 00 A4 04 00 [{aid}] else fail not_found\n}\n";
    std::fs::write(&lib, lib_text).unwrap();
    std::fs::create_dir_all(dir.join("city1")).unwrap();
    std::fs::write(
        dir.join("city1/main.cvs"),
        "city 1\nscript 1\nversion 1\ninput file_id: bytes[2]\nfail_codes { not_found = 2 }\n\
         include \"../common/lib.cvs\"\nselect(file_id)\ndone\n",
    )
    .unwrap();
    let lib_uri = uri(&lib);
    let mut c = Client::start();
    // Alone, `not_found` is undeclared; as city1/main.cvs includes it, all is well.
    c.open(&lib_uri, lib_text);
    assert_eq!(c.diagnostics(&lib_uri), Vec::<Value>::new());
    // Its parameter has the type the including program gives it.
    let text = hover_text(&c.at("textDocument/hover", &lib_uri, 1, 23));
    assert!(
        text.contains("parameter `aid`: `bytes` of routine `select`"),
        "{text}"
    );
    // An error in the fragment is shown in it, from the editor's (unsaved) text.
    c.change(&lib_uri, 2, &lib_text.replace("not_found", "not_fuond"));
    let d = c.diagnostics(&lib_uri);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["range"]["start"]["line"], 1, "{d:?}");
    assert!(
        d[0]["message"].as_str().unwrap().contains("not_fuond"),
        "{d:?}"
    );
    c.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
