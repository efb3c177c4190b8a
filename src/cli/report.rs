//! JSON view of a run report (before it becomes a signed receipt).

use super::trace::hex;
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Outcome, OutputValue, RunReport};
use serde_json::{Map, Value, json};

pub fn report_json(program: &VerifiedProgram, r: &RunReport) -> String {
    let h = program.header();
    let mut fields = Map::new();
    for (name, v) in &r.outputs {
        let v = match v {
            OutputValue::Int(i) => json!(i),
            OutputValue::Bytes(b) => json!(hex(b).replace(' ', "")),
        };
        fields.insert(name.clone(), v);
    }
    let mut out = json!({
        "city": h.city,
        "script_id": h.script_id,
        "script_version": h.version,
        "outcome": r.outcome.name(),
        "fields": Value::Object(fields),
        "apdu_count": r.apdu_count,
        "fuel_used": r.fuel_used,
        "transcript_sm3": hex(&r.transcript_sm3).replace(' ', ""),
    });
    if let Outcome::Failed(f) | Outcome::Unknown(f) = &r.outcome {
        out["failure"] = json!({ "code": f.code(), "reason": f.to_string() });
    }
    let mut s = serde_json::to_string_pretty(&out).unwrap_or_default();
    s.push('\n');
    s
}
