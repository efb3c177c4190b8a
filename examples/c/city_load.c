/*
 * city_load.c — one electronic-purse load (圈存) of a city, from C, through libcardvm.
 *
 *   city_load CITY_DIR [JOURNAL]    e.g.  city_load scripts/city0731-des3 /tmp/r.journal
 *
 * Assembles CITY_DIR/load.casm, compiles CITY_DIR/load.toml, builds the simulated card
 * of CITY_DIR/card.toml, runs the load against it through a C transmit callback (which
 * counts the APDUs and forwards them to cardvm_sim_transmit), and checks the receipt:
 * outcome committed, balance_after = balance_before + amount = the card's new balance.
 * With JOURNAL, the receipt is appended to that journal file. The reader here is an
 * authoring one (plain scripts, no keys): its receipts say "development" and are not
 * signed. It also checks that a reader with keys refuses plain scripts without
 * touching the card, and that misuse of the API returns error codes.
 * Exit status 0 = all good.
 *
 * Build (from the repository root, after `cargo build -p cardvm-capi --release`):
 *   gcc -std=c11 -Wall -Wextra -Icapi/include examples/c/city_load.c \
 *       target/release/libcardvm.a -lpthread -ldl -lm -o city_load
 */
#include "cardvm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            failures++;                                                        \
        }                                                                      \
    } while (0)

/* Prints the last error of ctx (0: of this thread) and exits. */
static void die(cardvm_ctx ctx, const char *what, int rc) {
    char msg[512];
    size_t needed = 0;
    if (cardvm_last_error(ctx, msg, sizeof msg, &needed) != CARDVM_OK) {
        snprintf(msg, sizeof msg, "(message of %zu bytes not shown)", needed);
    }
    fprintf(stderr, "%s failed (%d): %s\n", what, rc, msg);
    exit(1);
}

/* Reads a whole file as a NUL-terminated string; the caller frees it. */
static char *read_text(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    size_t n;
    while (text && (n = fread(text + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(text, cap * 2);
            if (!bigger) {
                free(text);
                text = NULL;
                break;
            }
            text = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (!text) {
        fprintf(stderr, "out of memory reading %s\n", path);
        exit(1);
    }
    text[len] = '\0';
    return text;
}

/* The transport: counts APDUs and forwards them to the simulated card. */
struct transport {
    cardvm_sim sim;
    int apdus;
};

static int counting_transmit(void *user, const uint8_t *cmd, size_t cmd_len,
                             uint8_t *resp, size_t resp_cap, size_t *resp_len) {
    struct transport *t = user;
    t->apdus++;
    return cardvm_sim_transmit(CARDVM_SIM_USER(t->sim), cmd, cmd_len, resp, resp_cap,
                               resp_len);
}

/* Calls a (buf, cap, needed) function twice: size query, then fill. Caller frees. */
#define FETCH(call_with, out_ptr, out_len)                                     \
    do {                                                                       \
        size_t need_ = 0;                                                      \
        int rc_ = call_with(NULL, 0, &need_);                                  \
        if (rc_ != CARDVM_E_BUFFER_TOO_SMALL) die(0, #call_with " size", rc_); \
        (out_ptr) = malloc(need_);                                             \
        if (!(out_ptr)) die(0, "malloc", 0);                                   \
        rc_ = call_with((void *)(out_ptr), need_, &need_);                     \
        if (rc_ != CARDVM_OK) die(0, #call_with, rc_);                         \
        (out_len) = need_;                                                     \
    } while (0)

static const char *g_dir;
static const char *g_data_toml;
static cardvm_ctx g_ctx;
static cardvm_sim g_sim;

static int assemble(void *buf, size_t cap, size_t *needed) {
    char path[1024];
    snprintf(path, sizeof path, "%s/load.casm", g_dir);
    return cardvm_assemble_file(path, buf, cap, needed);
}
static int compile(void *buf, size_t cap, size_t *needed) {
    return cardvm_compile_data(g_data_toml, buf, cap, needed);
}
static int receipt_json(void *buf, size_t cap, size_t *needed) {
    return cardvm_receipt_json(g_ctx, buf, cap, needed);
}
static int receipt_bytes(void *buf, size_t cap, size_t *needed) {
    return cardvm_receipt_bytes(g_ctx, buf, cap, needed);
}

static void check_misuse(void) {
    /* Null pointers, zero lengths, bad handles: error codes, never a crash. */
    cardvm_ctx ctx = cardvm_ctx_new(NULL);
    CHECK(ctx != 0, "cardvm_ctx_new(NULL)");
    CHECK(cardvm_load_command(ctx, NULL, 10) == CARDVM_E_NULL, "null command");
    const uint8_t junk[4] = {1, 2, 3, 4};
    CHECK(cardvm_load_command(ctx, junk, 0) == CARDVM_E_INVALID_ARG, "zero length");
    CHECK(cardvm_load_command(ctx, junk, sizeof junk) == CARDVM_E_SCRIPT, "junk script");
    CHECK(cardvm_last_error_code(ctx) == CARDVM_E_SCRIPT, "last error code");
    int outcome = -1;
    CHECK(cardvm_run(ctx, counting_transmit, NULL, &outcome) == CARDVM_E_STATE,
          "run without scripts");
    CHECK(cardvm_run(ctx, NULL, NULL, &outcome) == CARDVM_E_NULL, "null callback");
    CHECK(cardvm_set_journal(ctx, NULL) == CARDVM_E_NULL, "null journal path");
    CHECK(cardvm_set_keys(ctx, junk, sizeof junk, junk, sizeof junk, NULL, NULL) ==
              CARDVM_E_KEY,
          "4-byte keys");
    CHECK(cardvm_receipt_json(ctx, NULL, 0, NULL) == CARDVM_E_STATE, "no receipt yet");
    CHECK(cardvm_ctx_free(ctx) == CARDVM_OK, "free");
    CHECK(cardvm_ctx_free(ctx) == CARDVM_E_BAD_HANDLE, "double free");
    CHECK(cardvm_load_data(ctx, junk, sizeof junk) == CARDVM_E_BAD_HANDLE, "use after free");
    CHECK(cardvm_last_error_code(0) == CARDVM_E_BAD_HANDLE, "thread last error");
    CHECK(cardvm_ctx_free(0) == CARDVM_OK, "free(0)");
    CHECK(cardvm_sim_free(12345678) == CARDVM_E_BAD_HANDLE, "bad sim handle");
    CHECK(cardvm_sim_new_from_toml("kind = 'nonsense'") == 0, "bad card profile");
    CHECK(cardvm_last_error_code(0) == CARDVM_E_SIM, "bad card profile code");
}

/* A reader with keys runs sealed scripts only: the plain load is refused before the
 * card is touched, and runs in the explicit development mode. (Fixed test keys: the
 * issuer key is the SM2 generator, i.e. private key 1. Never use these.) */
static void check_policy(const uint8_t *command, size_t command_len, const uint8_t *data,
                         size_t data_len) {
    static const uint8_t reader_key[32] = {[31] = 2};
    static const uint8_t issuer_pub[65] = {
        0x04, 0x32, 0xC4, 0xAE, 0x2C, 0x1F, 0x19, 0x81, 0x19, 0x5F, 0x99, 0x04, 0x46,
        0x6A, 0x39, 0xC9, 0x94, 0x8F, 0xE3, 0x0B, 0xBF, 0xF2, 0x66, 0x0B, 0xE1, 0x71,
        0x5A, 0x45, 0x89, 0x33, 0x4C, 0x74, 0xC7, 0xBC, 0x37, 0x36, 0xA2, 0xF4, 0xF6,
        0x77, 0x9C, 0x59, 0xBD, 0xCE, 0xE3, 0x6B, 0x69, 0x21, 0x53, 0xD0, 0xA9, 0x87,
        0x7C, 0xC6, 0x2A, 0x47, 0x40, 0x02, 0xDF, 0x32, 0xE5, 0x21, 0x39, 0xF0, 0xA0};
    cardvm_ctx ctx = cardvm_ctx_new(NULL);
    CHECK(ctx != 0, "cardvm_ctx_new(NULL)");
    int rc = cardvm_set_keys(ctx, reader_key, sizeof reader_key, issuer_pub,
                             sizeof issuer_pub, "c-example-0731", NULL);
    CHECK(rc == CARDVM_OK, "cardvm_set_keys: %d", rc);
    CHECK(cardvm_load_command(ctx, command, command_len) == CARDVM_OK, "load command");
    CHECK(cardvm_load_data(ctx, data, data_len) == CARDVM_OK, "load data");
    struct transport t = {g_sim, 0};
    int outcome = -1;
    CHECK(cardvm_run(ctx, counting_transmit, &t, &outcome) == CARDVM_E_POLICY,
          "plain scripts on a reader with keys");
    CHECK(t.apdus == 0, "the card was touched: %d APDUs", t.apdus);
    CHECK(cardvm_set_allow_plain(ctx, 1) == CARDVM_OK, "cardvm_set_allow_plain");
    CHECK(cardvm_run(ctx, counting_transmit, &t, &outcome) == CARDVM_OK, "development run");
    int mode = -1;
    CHECK(cardvm_receipt_mode(ctx, &mode) == CARDVM_OK && mode == CARDVM_MODE_DEVELOPMENT,
          "development receipt");
    CHECK(cardvm_sign_receipt(ctx) == CARDVM_OK, "signed by the reader key");
    CHECK(cardvm_ctx_free(ctx) == CARDVM_OK, "free");
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s CITY_DIR [JOURNAL]\n", argv[0]);
        return 2;
    }
    const char *journal = argc == 3 ? argv[2] : NULL;
    g_dir = argv[1];
    printf("%s\n", cardvm_version());

    /* The card company's side: scripts from text. */
    uint8_t *command, *data;
    size_t command_len, data_len;
    FETCH(assemble, command, command_len);
    g_data_toml = read_text(g_dir, "load.toml");
    FETCH(compile, data, data_len);

    /* The customer's card. */
    char *card_toml = read_text(g_dir, "card.toml");
    g_sim = cardvm_sim_new_from_toml(card_toml);
    if (g_sim == 0) die(0, "cardvm_sim_new_from_toml", cardvm_last_error_code(0));
    uint32_t before = 0;
    if (cardvm_sim_balance(g_sim, &before) != CARDVM_OK) die(0, "cardvm_sim_balance", -1);

    /* The reader: a context, the scripts, the run. */
    cardvm_limits limits;
    cardvm_limits_default(&limits);
    limits.fuel = 50000;
    g_ctx = cardvm_ctx_new(&limits);
    if (g_ctx == 0) die(0, "cardvm_ctx_new", cardvm_last_error_code(0));
    int rc;
    if ((rc = cardvm_set_reader_id(g_ctx, "c-example-0731")) != CARDVM_OK)
        die(g_ctx, "cardvm_set_reader_id", rc);
    /* The journal is opened (and held) now, before any card is touched. */
    if (journal && (rc = cardvm_set_journal(g_ctx, journal)) != CARDVM_OK)
        die(g_ctx, "cardvm_set_journal", rc);
    if ((rc = cardvm_load_command(g_ctx, command, command_len)) != CARDVM_OK)
        die(g_ctx, "cardvm_load_command", rc);
    if ((rc = cardvm_load_data(g_ctx, data, data_len)) != CARDVM_OK)
        die(g_ctx, "cardvm_load_data", rc);

    struct transport t = {g_sim, 0};
    int outcome = -1;
    rc = cardvm_run(g_ctx, counting_transmit, &t, &outcome);
    if (rc == CARDVM_E_UNJOURNALED) {
        /* The card was reached but the journal refused the receipt: never drop it. */
        char *lost;
        size_t lost_len;
        FETCH(receipt_json, lost, lost_len);
        fprintf(stderr, "receipt NOT journaled, deliver it yourself (%zu bytes):\n%s\n",
                lost_len, lost);
        free(lost);
        die(g_ctx, "cardvm_run", rc);
    }
    if (rc != CARDVM_OK) die(g_ctx, "cardvm_run", rc);

    /* The receipt. */
    char *json;
    size_t json_len;
    FETCH(receipt_json, json, json_len);
    printf("%d APDUs, receipt:\n%s\n", t.apdus, json);
    uint8_t *bytes;
    size_t bytes_len;
    FETCH(receipt_bytes, bytes, bytes_len);

    uint64_t balance_before = 0, balance_after = 0, amount = 0;
    CHECK(outcome == CARDVM_OUTCOME_COMMITTED, "outcome %d, not committed", outcome);
    CHECK(cardvm_receipt_field_int(g_ctx, "balance_before", &balance_before) == CARDVM_OK,
          "balance_before");
    CHECK(cardvm_receipt_field_int(g_ctx, "balance_after", &balance_after) == CARDVM_OK,
          "balance_after");
    CHECK(cardvm_receipt_field_int(g_ctx, "amount", &amount) == CARDVM_OK, "amount");
    uint32_t after = 0;
    CHECK(cardvm_sim_balance(g_sim, &after) == CARDVM_OK, "cardvm_sim_balance");
    CHECK(balance_before == before, "balance_before %llu, card had %u",
          (unsigned long long)balance_before, before);
    CHECK(balance_after == balance_before + amount, "balance_after %llu",
          (unsigned long long)balance_after);
    CHECK(balance_after == after, "card balance %u, receipt says %llu", after,
          (unsigned long long)balance_after);
    CHECK(strstr(json, "\"committed\"") != NULL, "receipt JSON says committed");
    CHECK(t.apdus > 0, "no APDU went through the callback");
    CHECK(bytes_len > 4 && memcmp(bytes, "CVRC", 4) == 0, "receipt bytes start with CVRC");

    /* A buffer one byte short is refused, with the size needed. */
    size_t needed = 0;
    char small[8];
    CHECK(cardvm_receipt_json(g_ctx, small, sizeof small, &needed) ==
              CARDVM_E_BUFFER_TOO_SMALL && needed == json_len,
          "buffer too small");
    /* An authoring reader: development mode, unsigned. */
    int mode = -1;
    CHECK(cardvm_receipt_mode(g_ctx, &mode) == CARDVM_OK && mode == CARDVM_MODE_DEVELOPMENT,
          "mode %d, not development", mode);
    CHECK(cardvm_sign_receipt(g_ctx) == CARDVM_E_STATE, "unsigned without a key");
    uint64_t seq = 0;
    rc = cardvm_receipt_journal_seq(g_ctx, &seq);
    if (journal) {
        CHECK(rc == CARDVM_OK, "cardvm_receipt_journal_seq: %d", rc);
        printf("receipt journaled as entry %llu in %s\n", (unsigned long long)seq, journal);
    } else {
        CHECK(rc == CARDVM_E_STATE, "journal seq without a journal: %d", rc);
    }

    check_policy(command, command_len, data, data_len);
    memset(data, 0, data_len); /* the data script holds keys */
    check_misuse();

    CHECK(cardvm_ctx_free(g_ctx) == CARDVM_OK, "ctx free");
    CHECK(cardvm_sim_free(g_sim) == CARDVM_OK, "sim free");
    free(command);
    free(data);
    free(json);
    free(bytes);
    free(card_toml);
    free((char *)g_data_toml);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("load committed: balance %u -> %llu fen\n", before,
           (unsigned long long)balance_after);
    return 0;
}
