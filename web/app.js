// The card company's recharge page (docs/agent.md, docs/kiosk.md). Plain JavaScript, no
// build step and no external resource: the page is served as it is by `cardvm issuer
// serve` under /pay/. The card work is done by `cardvm agent` on the cardholder's machine.

const T = {
  zh: {
    title: "城市一卡通充值", reader: "读卡器", card: "卡片", read: "读卡", number: "卡号",
    balance: "余额", recharge: "充值", amount: "充值金额（元）", "amount-help": "例如 100.00",
    "recharge-go": "充值", progress: "进度", confirm: "确认", cancel: "取消",
    connecting: "正在连接读卡器…", connected: "已连接读卡器。",
    "no-agent": "未找到读卡器程序，请先启动读卡程序。", refused: "读卡器程序拒绝了此页面。",
    present: "卡片已放置。", removed: "请将卡片放在读卡器上。",
    "bad-amount": "请输入正确的金额，例如 100.00。",
    "confirm-text": (a, c) => `确认向卡号 ${c} 充值 ${a} 元？`,
    "balance-after": (b) => `当前余额 ${b} 元。`,
    busy: "读卡器正忙，请稍候。", mismatch: "卡片或金额已变化，请重新读卡。",
    stage: {
      order: () => "订单信息", query_script: () => "正在请求读卡指令",
      card_read: (e) => e.balance ? `已读卡，余额 ${e.balance} 元` : "已读卡",
      recovering: () => "正在完成此卡上一笔未完成的交易", approved: () => "已批准，请勿移开卡片",
      card_done: () => "卡片已处理", confirmed: () => "发卡机构已确认",
    },
  },
  en: {
    title: "City Card recharge", reader: "Card reader", card: "Card", read: "Read card",
    number: "Card number", balance: "Balance", recharge: "Recharge",
    amount: "Amount (yuan)", "amount-help": "For example 100.00", "recharge-go": "Recharge",
    progress: "Progress", confirm: "Confirm", cancel: "Cancel",
    connecting: "Connecting to the card reader…", connected: "Card reader connected.",
    "no-agent": "The card reader program was not found. Start it first.",
    refused: "The card reader program refused this page.",
    present: "Card on the reader.", removed: "Put the card on the reader.",
    "bad-amount": "Enter an amount such as 100.00.",
    "confirm-text": (a, c) => `Recharge ${a} yuan to card ${c}?`,
    "balance-after": (b) => `Balance now ${b} yuan.`,
    busy: "The reader is busy. Please wait.", mismatch: "The card or the amount changed. Read the card again.",
    stage: {
      order: () => "Order", query_script: () => "Asking the card company for the card query",
      card_read: (e) => e.balance ? `Card read: balance ${e.balance} yuan` : "Card read",
      recovering: () => "Finishing this card's interrupted transaction first",
      approved: () => "Approved: keep the card on the reader", card_done: () => "Card written",
      confirmed: () => "Confirmed by the card company",
    },
  },
};

const params = new URLSearchParams(location.search);
const AGENT = params.get("agent") || "http://127.0.0.1:47731";
let lang = params.get("lang") === "en" ? "en" : "zh";
let token = null;
let card = null; // { card_id, balance_fen }
let lastResult = null;
let steps = []; // the progress events of the transaction shown

const $ = (id) => document.getElementById(id);
const t = (key, ...args) => { const v = T[lang][key]; return typeof v === "function" ? v(...args) : v; };
const yuan = (fen) => `${Math.floor(fen / 100)}.${String(fen % 100).padStart(2, "0")}`;

function setLang(l) {
  lang = l;
  document.documentElement.lang = l === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  $("lang-zh").setAttribute("aria-pressed", String(l === "zh"));
  $("lang-en").setAttribute("aria-pressed", String(l === "en"));
  for (const el of document.querySelectorAll("[data-t]")) {
    const v = T[l][el.dataset.t];
    if (typeof v === "string") el.textContent = v;
  }
  const s = $("reader-status");
  if (s.dataset.key) s.textContent = t(s.dataset.key);
  const c = $("card-status");
  if (c.dataset.key) c.textContent = t(c.dataset.key);
  renderSteps();
  if (lastResult) showResult(lastResult);
}

function renderSteps() {
  $("steps").replaceChildren(...steps.map((e) => {
    const li = document.createElement("li");
    li.dataset.stage = e.stage;
    const label = T[lang].stage[e.stage];
    li.textContent = `[${e.step}/${e.of}] ${label ? label(e) : e.message}`;
    return li;
  }));
}

function status(id, key, state) {
  const el = $(id);
  el.dataset.key = key;
  el.dataset.state = state;
  el.textContent = t(key);
}

async function call(path, body) {
  const r = await fetch(AGENT + path, {
    method: "POST",
    headers: Object.assign({ "content-type": "application/json" },
      token ? { authorization: `Bearer ${token}` } : {}),
    body: JSON.stringify(body || {}),
  });
  return { status: r.status, body: await r.json() };
}

function showCard(r) {
  card = { card_id: r.card_id, balance_fen: r.balance_before_fen };
  $("card-number").textContent = r.card_id;
  $("card-balance").textContent = r.balance_before_fen == null ? "—" : yuan(r.balance_before_fen);
  $("card-info").hidden = false;
  $("recharge").disabled = false;
}

function showResult(r) {
  lastResult = r;
  const el = $("result");
  el.hidden = false;
  el.dataset.code = r.code;
  el.className = r.class === "ok" ? "ok" : "failed";
  let text = lang === "zh" ? r.message_zh : r.message;
  if (r.class === "ok" && r.balance_after_fen != null) text += " " + t("balance-after", yuan(r.balance_after_fen));
  el.textContent = text;
}

function onEvent(e) {
  if (e.event === "card_present") status("card-status", "present", "ok");
  else if (e.event === "card_removed") status("card-status", "removed", "error");
  else if (e.event === "progress") {
    if (e.step === 1) steps = [];
    steps.push(e);
    renderSteps();
  }
}

async function connect() {
  try {
    const r = await call("/v1/pair");
    if (r.status !== 200) { status("reader-status", "refused", "error"); return; }
    token = r.body.token;
  } catch (_) {
    status("reader-status", "no-agent", "error");
    return;
  }
  status("reader-status", "connected", "ok");
  $("read").disabled = false;
  const es = new EventSource(`${AGENT}/v1/events?token=${encodeURIComponent(token)}`);
  es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (_) { /* not ours */ } };
}

async function readCard() {
  $("read").disabled = true;
  try {
    const r = await call("/v1/card");
    if (r.status === 200 && r.body.code === "card_read") showCard(r.body);
    else if (r.status === 200) showResult(r.body);
  } finally { $("read").disabled = false; }
}

function confirmed(amountFen) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = t("confirm-text", yuan(amountFen), card.card_id);
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
  });
}

async function recharge(ev) {
  ev.preventDefault();
  const input = $("amount");
  const m = /^([0-9]{1,6})(?:\.([0-9]{1,2}))?$/.exec(input.value.trim());
  if (!m || !card) {
    input.setAttribute("aria-invalid", "true");
    $("amount-help").textContent = t("bad-amount");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  const amountFen = Number(m[1]) * 100 + Number((m[2] || "0").padEnd(2, "0"));
  if (amountFen <= 0 || !(await confirmed(amountFen))) return;
  $("recharge").disabled = true;
  $("result").hidden = true;
  try {
    const r = await call("/v1/recharge", {
      amount_fen: amountFen,
      confirm: { card_id: card.card_id, amount_fen: amountFen },
    });
    if (r.status === 200) {
      showResult(r.body);
      if (r.body.class === "ok") showCard({ card_id: card.card_id, balance_before_fen: r.body.balance_after_fen });
    } else {
      showResult({ code: r.body.code, class: "refused",
        message: t(r.body.code === "busy" ? "busy" : "mismatch"), message_zh: T.zh[r.body.code === "busy" ? "busy" : "mismatch"] });
    }
  } finally { $("recharge").disabled = false; }
}

$("lang-zh").addEventListener("click", () => setLang("zh"));
$("lang-en").addEventListener("click", () => setLang("en"));
$("read").addEventListener("click", readCard);
$("recharge-form").addEventListener("submit", recharge);
setLang(lang);
connect();
