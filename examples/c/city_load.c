/*
 * city_load.c — one electronic-purse load (圈存) of a city, from C, through libcardvm.
 *
 *   city_load CITY_DIR        e.g.  city_load scripts/city0731-des3
 *
 * Assembles CITY_DIR/load.casm, compiles CITY_DIR/load.toml, builds the simulated card
 * of CITY_DIR/card.toml, runs the load against it through a C transmit callback (which
 * counts the APDUs and forwards them to cardvm_sim_transmit), and checks the receipt:
 * outcome committed, balance_after = balance_before + amount = the card's new balance.
 * It also checks that misuse of the API returns error codes. Exit status 0 = all good.
 *
 * Build (from the repository root, after `cargo build -p cardvm-capi`):
 *   gcc -std=c11 -Wall -Wextra -Icapi/include examples/c/city_load.c \
 *       target/debug/libcardvm.a -lpthread -ldl -lm -o city_load
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
static int card_id(void *buf, size_t cap, size_t *needed) {
    return cardvm_sim_card_id(g_sim, buf, cap, needed);
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

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CITY_DIR\n", argv[0]);
        return 2;
    }
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
    if ((rc = cardvm_load_command(g_ctx, command, command_len)) != CARDVM_OK)
        die(g_ctx, "cardvm_load_command", rc);
    if ((rc = cardvm_load_data(g_ctx, data, data_len)) != CARDVM_OK)
        die(g_ctx, "cardvm_load_data", rc);
    memset(data, 0, data_len); /* the data script holds keys */
    uint8_t *id;
    size_t id_len;
    FETCH(card_id, id, id_len);
    if ((rc = cardvm_set_card_id(g_ctx, id, id_len)) != CARDVM_OK)
        die(g_ctx, "cardvm_set_card_id", rc);
    if ((rc = cardvm_set_reader_id(g_ctx, "c-example-0731")) != CARDVM_OK)
        die(g_ctx, "cardvm_set_reader_id", rc);

    struct transport t = {g_sim, 0};
    int outcome = -1;
    if ((rc = cardvm_run(g_ctx, counting_transmit, &t, &outcome)) != CARDVM_OK)
        die(g_ctx, "cardvm_run", rc);

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
    /* Unsigned: no reader key set. */
    CHECK(cardvm_sign_receipt(g_ctx) == CARDVM_E_STATE, "sign without a key");

    check_misuse();

    CHECK(cardvm_ctx_free(g_ctx) == CARDVM_OK, "ctx free");
    CHECK(cardvm_sim_free(g_sim) == CARDVM_OK, "sim free");
    free(command);
    free(data);
    free(id);
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
