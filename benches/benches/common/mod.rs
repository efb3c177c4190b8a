//! Shared set-up of the load benchmarks (benches/load.rs) and the DESIGN §5 report
//! (benches/examples/targets.rs, which includes this file by path).
//!
//! A "load" is the city's `load.casm` (3DES: city 0731, SM4: city 0755) with its example
//! `load.toml`, run against a fresh simulated CPU card built from the city's `card.toml`
//! (cards are built outside the timed region: a card is not reusable, its balance grows).
//!
//! How the VM overhead is measured (the same for cardvm and for Lua):
//!
//! * **total** — one whole transaction: bind the data script to the (cached, verified)
//!   program, run it over an `ApduLayer` on the card, build the report. For Lua: call the
//!   preloaded Lua `load` function with the inputs, which returns a table of outputs.
//! * **card** — the exact command APDUs the VM sent (recorded once), sent directly to a
//!   fresh card in the same state with `CardTransport::transmit` (the card is seeded, so it
//!   answers byte for byte the same). This is the card model, including its own crypto.
//! * **crypto** — the reader-side crypto calls the load makes, with the same inputs, made
//!   directly in Rust: one `process_key`, three `pboc_mac` (MAC1 check, MAC2, TAC), one
//!   `tac_key`, two constant-time compares. cardvm also hashes the APDU transcript with
//!   SM3 for its receipt (the Lua peer does not): that hash, over the same exchange, is
//!   measured too and counted in cardvm's crypto share.
//! * **overhead** = total − card − crypto: what the interpreter (and its glue) costs.
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::crypto::{self, SecretKey};
use cardvm::script::{CommandScript, DataScript, FieldValue};
use cardvm::sim::{CardProfile, SimCard};
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::{Binding, VerifiedProgram};
use cardvm::vm::{NoTrace, Outcome, RunReport, Vm};

/// One city's load: its script, data, card and the recorded exchange.
pub struct LoadCase {
    /// "3DES" or "SM4".
    pub name: &'static str,
    /// The assembled command script.
    pub script: CommandScript,
    /// The verified program (cached per city and version, as a reader does).
    pub program: VerifiedProgram,
    /// The example data script.
    pub data: DataScript,
    /// The card profile (a fresh card per transaction).
    pub profile: CardProfile,
    /// The command APDUs a load sends, in order.
    pub commands: Vec<Vec<u8>>,
    /// The raw responses (data ‖ SW) to `commands`.
    pub responses: Vec<Vec<u8>>,
    /// The algorithm byte INITIALIZE FOR LOAD reports.
    pub alg_id: u8,
}

/// The 3DES (city 0731) and SM4 (city 0755) loads.
pub fn cases() -> Vec<LoadCase> {
    vec![
        case("3DES", "scripts/city0731-des3", 0x00),
        case("SM4", "scripts/city0755-sm4", 0x04),
    ]
}

fn case(name: &'static str, dir: &str, alg_id: u8) -> LoadCase {
    // The repository root: this crate is benches/ in it.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let script = assemble_file(
        format!("{root}/{dir}/load.casm").as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script;
    let program = VerifiedProgram::verify(&script).unwrap();
    let data =
        compile_data(&std::fs::read_to_string(format!("{root}/{dir}/load.toml")).unwrap()).unwrap();
    let profile = CardProfile::from_toml(
        &std::fs::read_to_string(format!("{root}/{dir}/card.toml")).unwrap(),
    )
    .unwrap();
    let mut c = LoadCase {
        name,
        script,
        program,
        data,
        profile,
        commands: Vec::new(),
        responses: Vec::new(),
        alg_id,
    };
    let mut rec = Recorder(c.card(), Vec::new(), Vec::new());
    let report = run_vm(&c, &mut Reader::default(), &mut rec);
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{name} load: {report:?}"
    );
    c.commands = rec.1;
    c.responses = rec.2;
    assert_eq!(
        c.transcript_only(),
        report.transcript_sm3,
        "{name}: transcript share differs from the VM's"
    );
    c
}

impl LoadCase {
    /// A fresh card.
    pub fn card(&self) -> SimCard {
        self.profile.build().unwrap()
    }

    /// A key input of the data script.
    pub fn key(&self, name: &str) -> SecretKey {
        match self.field(name) {
            FieldValue::Key(k) => k.clone(),
            other => panic!("{name} is not a key: {other:?}"),
        }
    }

    fn field(&self, name: &str) -> &FieldValue {
        &self
            .data
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .value
    }

    /// An integer input.
    pub fn int(&self, name: &str) -> u64 {
        match self.field(name) {
            FieldValue::Int(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    /// A byte-string input (bytes or BCD date-time).
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        match self.field(name) {
            FieldValue::Bytes(b) => b.clone(),
            FieldValue::BcdDateTime(b) => b.to_vec(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// Sends the recorded commands straight to `card` (the card-model share of a load).
    pub fn replay_on(&self, card: &mut SimCard) -> usize {
        let mut resp = [0u8; 258];
        let mut n = 0;
        for c in &self.commands {
            n += card.transmit(c, &mut resp).unwrap();
        }
        n
    }

    /// The reader-side crypto of one load, made directly (the crypto share of a load).
    pub fn crypto_only(&self, k: &CryptoInputs) -> bool {
        let session = crypto::process_key(&k.dlk, &k.pkey_in).unwrap();
        let mac1 = crypto::pboc_mac(&session, &k.mac1_in).unwrap();
        let ok1 = crypto::ct_eq(&mac1, &k.mac1_in[..4]);
        let mac2 = crypto::pboc_mac(&session, &k.mac2_in).unwrap();
        let tk = crypto::tac_key(&k.dtk).unwrap();
        let tac = crypto::pboc_mac(&tk, &k.tac_in).unwrap();
        let ok2 = crypto::ct_eq(&tac, &mac2);
        ok1 ^ ok2
    }

    /// The SM3 transcript hash a cardvm run keeps for its receipt (crypto the Lua peer
    /// does not do; counted in cardvm's crypto share, not in its overhead).
    pub fn transcript_only(&self) -> [u8; 32] {
        let mut t = cardvm::vm::TranscriptHasher::new();
        for (c, r) in self.commands.iter().zip(&self.responses) {
            t.command(c);
            let (data, sw) = r.split_at(r.len() - 2);
            t.response(data, u16::from_be_bytes([sw[0], sw[1]]));
        }
        t.finalize()
    }

    /// Inputs of [`LoadCase::crypto_only`] with the load's lengths.
    pub fn crypto_inputs(&self) -> CryptoInputs {
        CryptoInputs {
            dlk: self.key("dlk"),
            dtk: self.key("dtk"),
            pkey_in: [0x12, 0x34, 0x56, 0x78, 0x00, 0x01, 0x80, 0x00],
            mac1_in: vec![0x5A; 4 + 4 + 1 + 6],
            mac2_in: vec![0x5A; 4 + 1 + 6 + 7],
            tac_in: vec![0x5A; 4 + 2 + 4 + 1 + 6 + 7],
        }
    }
}

/// Inputs of the crypto share.
pub struct CryptoInputs {
    pub dlk: SecretKey,
    pub dtk: SecretKey,
    pub pkey_in: [u8; 8],
    pub mac1_in: Vec<u8>,
    pub mac2_in: Vec<u8>,
    pub tac_in: Vec<u8>,
}

/// Records every command APDU and its raw response.
pub struct Recorder<T>(pub T, pub Vec<Vec<u8>>, pub Vec<Vec<u8>>);

impl<T: CardTransport> CardTransport for Recorder<T> {
    fn transmit(&mut self, c: &[u8], r: &mut [u8]) -> Result<usize, TransportError> {
        self.1.push(c.to_vec());
        let n = self.0.transmit(c, r)?;
        self.2.push(r[..n].to_vec());
        Ok(n)
    }
}

/// What a reader keeps between transactions: the interpreter and the binding storage.
#[derive(Default)]
pub struct Reader {
    /// The reusable VM.
    pub vm: Vm,
    /// The reusable binding.
    pub binding: Binding,
}

/// One cardvm transaction: bind the data, run, report.
pub fn run_vm<T: CardTransport>(case: &LoadCase, reader: &mut Reader, card: T) -> RunReport {
    let bound = case
        .program
        .bind_into(&case.data, &mut reader.binding)
        .unwrap();
    reader
        .vm
        .run(bound, &mut ApduLayer::new(card), &mut NoTrace)
}

/// The same load flow in Lua 5.4: ISO/PBOC APDUs built with string operations, the card
/// and the crypto reached through Rust functions registered into Lua.
pub const LUA_LOAD: &str = r#"
local SELECT_PURSE = "\x00\xA4\x04\x00\x09\xA0\x00\x00\x00\x03\x86\x98\x07\x01\x00"
local READ_EF15 = "\x00\xB0\x95\x00\x1E"

local function sw(resp)
  local n = #resp
  return string.byte(resp, n - 1) * 256 + string.byte(resp, n), string.sub(resp, 1, n - 2)
end

function load(amount, terminal, now, dlk, dtk, alg_id)
  local s = sw(transmit(SELECT_PURSE))
  if s ~= 0x9000 then return { fail = 1 } end
  local s, ef15 = sw(transmit(READ_EF15))
  if s ~= 0x9000 then return { fail = 10 } end
  local card_id = string.sub(ef15, 13, 20)
  local amt4 = string.pack(">I4", amount)
  local data = "\x01" .. amt4 .. terminal
  local s, resp = sw(transmit("\x80\x50\x00\x02" .. string.char(#data) .. data .. "\x10"))
  if s == 0x9403 then return { fail = 5 } end
  if s == 0x9303 then return { fail = 8 } end
  if s ~= 0x9000 then return { fail = 2 } end
  local bal4 = string.sub(resp, 1, 4)
  local atc2 = string.sub(resp, 5, 6)
  local alg = string.byte(resp, 8)
  local rnd = string.sub(resp, 9, 12)
  local mac1 = string.sub(resp, 13, 16)
  if alg ~= alg_id then return { fail = 6 } end
  local session = pkey(dlk, rnd .. atc2 .. "\x80\x00")
  local ttype = "\x02"
  if not cteq(mac(session, bal4 .. amt4 .. ttype .. terminal), mac1) then
    return { fail = 3 }
  end
  local mac2 = mac(session, amt4 .. ttype .. terminal .. now)
  local data = now .. mac2
  local s, tac = sw(transmit("\x80\x52\x00\x00" .. string.char(#data) .. data .. "\x04"))
  if s == 0x9302 then return { fail = 3 } end
  if s ~= 0x9000 then return { fail = 4 } end
  local bal = string.unpack(">I4", bal4)
  local bal_after = bal + amount
  local expect = mac(tackey(dtk), string.pack(">I4", bal_after) .. atc2 .. amt4 .. ttype
    .. terminal .. now)
  return {
    card_id = card_id,
    balance_before = bal,
    balance_after = bal_after,
    atc = string.unpack(">I2", atc2),
    amount = amount,
    txn_type = 2,
    terminal_id = terminal,
    datetime = now,
    mac2 = mac2,
    tac = tac,
    tac_ok = cteq(expect, tac) and 1 or 0,
  }
end
"#;

/// A key handed to Lua as opaque userdata (the bytes never become a Lua string).
pub struct LuaKey(pub SecretKey);

impl mlua::UserData for LuaKey {}

/// The Lua peer: an interpreter with the load flow and the Rust functions, driving the
/// card in `card`.
pub struct LuaPeer {
    lua: mlua::Lua,
    load: mlua::Function,
    /// The card the registered `transmit` talks to.
    pub card: Rc<RefCell<Option<SimCard>>>,
}

impl LuaPeer {
    /// Builds the interpreter and loads [`LUA_LOAD`].
    pub fn new() -> Self {
        use mlua::{Lua, UserDataRef};
        let lua = Lua::new();
        let card: Rc<RefCell<Option<SimCard>>> = Rc::new(RefCell::new(None));
        let g = lua.globals();
        let c = card.clone();
        let buf = RefCell::new(vec![0u8; 258]);
        let transmit = lua
            .create_function(move |lua, cmd: mlua::LuaString| {
                let mut card = c.borrow_mut();
                let card = card
                    .as_mut()
                    .ok_or_else(|| mlua::Error::runtime("no card"))?;
                let mut buf = buf.borrow_mut();
                let n = card
                    .transmit(&cmd.as_bytes(), &mut buf)
                    .map_err(mlua::Error::external)?;
                lua.create_string(&buf[..n])
            })
            .unwrap();
        g.set("transmit", transmit).unwrap();
        let pkey = lua
            .create_function(|_, (k, input): (UserDataRef<LuaKey>, mlua::LuaString)| {
                let input: [u8; 8] = input
                    .as_bytes()
                    .as_ref()
                    .try_into()
                    .map_err(|_| mlua::Error::runtime("pkey input is not 8 bytes"))?;
                let s = crypto::process_key(&k.0, &input).map_err(mlua::Error::external)?;
                Ok(LuaKey(s))
            })
            .unwrap();
        g.set("pkey", pkey).unwrap();
        let mac = lua
            .create_function(|lua, (k, data): (UserDataRef<LuaKey>, mlua::LuaString)| {
                let m = crypto::pboc_mac(&k.0, &data.as_bytes()).map_err(mlua::Error::external)?;
                lua.create_string(m)
            })
            .unwrap();
        g.set("mac", mac).unwrap();
        let tackey = lua
            .create_function(|_, k: UserDataRef<LuaKey>| {
                Ok(LuaKey(
                    crypto::tac_key(&k.0).map_err(mlua::Error::external)?,
                ))
            })
            .unwrap();
        g.set("tackey", tackey).unwrap();
        let cteq = lua
            .create_function(|_, (a, b): (mlua::LuaString, mlua::LuaString)| {
                Ok(crypto::ct_eq(&a.as_bytes(), &b.as_bytes()))
            })
            .unwrap();
        g.set("cteq", cteq).unwrap();
        lua.load(LUA_LOAD).exec().unwrap();
        let load: mlua::Function = g.get("load").unwrap();
        drop(g);
        LuaPeer { lua, load, card }
    }

    /// One Lua transaction on `card`: pass the inputs, run, collect the output table.
    /// Returns the card and the number of outputs.
    pub fn run(&self, case: &LoadCase, card: SimCard) -> (SimCard, usize) {
        *self.card.borrow_mut() = Some(card);
        let terminal = self.lua.create_string(case.bytes("terminal")).unwrap();
        let now = self.lua.create_string(case.bytes("now")).unwrap();
        let out: mlua::Table = self
            .load
            .call((
                case.int("amount"),
                terminal,
                now,
                LuaKey(case.key("dlk")),
                LuaKey(case.key("dtk")),
                case.alg_id,
            ))
            .unwrap();
        let n = out.pairs::<mlua::Value, mlua::Value>().count();
        (self.card.borrow_mut().take().unwrap(), n)
    }
}

/// Checks the Lua peer really loads: balance and TAC as cardvm's.
pub fn check_lua(case: &LoadCase, peer: &LuaPeer) {
    let (card, n) = peer.run(case, case.card());
    // The ten load outputs and the card id, as the cardvm load reports them.
    assert_eq!(n, 11, "{}: Lua load failed", case.name);
    let before = case.card();
    let after = match (&card, &before) {
        (SimCard::Cpu(a), SimCard::Cpu(b)) => (a.balance(), b.balance()),
        _ => panic!("not a CPU card"),
    };
    assert_eq!(
        u64::from(after.0),
        u64::from(after.1) + case.int("amount"),
        "{}: Lua load did not credit the card",
        case.name
    );
    let tac_ok: i64 = {
        *peer.card.borrow_mut() = Some(case.card());
        let out: mlua::Table = peer
            .load
            .call((
                case.int("amount"),
                peer.lua.create_string(case.bytes("terminal")).unwrap(),
                peer.lua.create_string(case.bytes("now")).unwrap(),
                LuaKey(case.key("dlk")),
                LuaKey(case.key("dtk")),
                case.alg_id,
            ))
            .unwrap();
        out.get("tac_ok").unwrap()
    };
    assert_eq!(tac_ok, 1, "{}: Lua TAC did not verify", case.name);
}

/// The modelled air time of one load at 106 kbit/s (the card's default model), µs.
pub fn air_time_us(case: &LoadCase) -> u64 {
    let mut card = case.card();
    let r = run_vm(case, &mut Reader::default(), &mut card);
    assert_eq!(r.outcome, Outcome::Committed);
    card.air_time().total_us()
}
