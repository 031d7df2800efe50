/* The one table of tolerances: the largest relative L2 error (||dut - ref|| / ||ref||) each op
 * may show against the CPU reference, per KV storage dtype. Edit here only; the reports and
 * docs/conformance.md print this table. */
#include <stdio.h>
#include <string.h>

#include "conformance.h"

typedef struct cf_tolerance_row {
    const char *op;
    double tol[3];    /* f32, f16, bf16 */
    double strict[3]; /* --strict and the Criterion suites: per element; -1 not used */
    const char *why;
} cf_tolerance_row;

/* Unit roundoff: f32 2^-24 (6.0e-8), f16 2^-11 (4.9e-4), bf16 2^-8 (3.9e-3). The strict
 * bound is per element, |dut - ref| <= strict * (1 + |ref|), 0 meaning identical bytes: what
 * a device that rounds to nearest even and accumulates in f32 meets (PoCL and lavapipe do). */
static const cf_tolerance_row table[] = {
    {"device", {0, 0, 0}, {0, 0, 0}, "device info and capabilities: checked field by field"},
    {"copies", {0, 0, 0}, {0, 0, 0},
     "write/read/copy/marker/finish/events across the three queues move bytes exactly"},
    {"host_memory", {0, 0, 0}, {0, 0, 0}, "data movement is exact"},
    {"event_chain", {0, 0, 0}, {0, 0, 0},
     "commands ordered only by events: data movement and storage of f32 rows are exact; "
     "summaries are the min/max of stored values"},
    {"write_regions", {0, 0, 0}, {0, 0, 0}, "data movement is exact"},
    {"buffer_import", {0, 0, 0}, {0, 0, 0}, "data movement is exact"},
    {"append", {0, 1e-3, 8e-3}, {0, 0, 0},
     "f32 is stored as is; f16/bf16 allow another rounding mode than nearest-even (1 ulp: 2u)"},
    {"summarize", {0, 0, 0}, {0, 0, 0}, "per-channel min/max of stored values is exact in any order"},
    {"scores", {1e-5, 1e-5, 1e-5}, {2e-5, 2e-5, 2e-5},
     "f32 sum of head_dim products (q is f32, summaries f32); summation order may differ"},
    {"summarize_f16", {0, 0, 0}, {0, 0, 0},
     "f16 summaries (fkv_summary_format): min rounded down, max up to f16, deterministic bits, "
     "also for keys beyond the f16 range, NaN keys and f16 subnormals"},
    {"scores_f16", {1e-5, 1e-5, 1e-5}, {2e-5, 2e-5, 2e-5},
     "as scores: f16 summaries widen exactly to f32; against the f32 summaries they round, "
     "the bound only grows (docs/eval.md, \"Summary formats\")"},
    {"scores_edges", {1e-5, 1e-5, 1e-5}, {2e-5, 2e-5, 2e-5},
     "as scores; a NaN product is skipped by the max (as fmax), a NaN or infinite score must "
     "be the reference's"},
    {"cosine_flags", {1e-5, 1e-5, 1e-5}, {1e-5, 1e-5, 1e-5},
     "f32 dot products and norms; a flag may differ only where |sim - tau| is within this"},
    {"cosine_nan", {0, 0, 0}, {0, 0, 0},
     "a query holding a NaN or an infinity: similarity NaN and flag 1 (backend.h); the other "
     "flags exactly"},
    {"scores_check", {1e-5, 1e-5, 1e-5}, {2e-5, 2e-5, 2e-5},
     "cosine_flags and scores in one launch: the scores row against the reference (flags allow "
     "ties as cosine_flags'), and bit for bit the device's own cosine_flags and scores"},
    {"pack_hnd", {0, 0, 0}, {0, 0, 0}, "layout conversion moves stored values exactly"},
    {"scatter_hnd", {0, 0, 0}, {0, 0, 0}, "layout conversion moves stored values exactly"},
    {"recall_direct", {0, 0, 0}, {0, 0, 0}, "layout conversion moves stored values exactly"},
    {"quantize", {1, 1, 1}, {1, 1, 1},
     "pack_hnd into q8/q4 units (common/hostfmt.h), in codes: f16 scales and zeros exact (their "
     "directed roundings and the f32 division by L are integer-exact on every device), every "
     "code equal or within one code, because the code's f32 division (x - zero) / scale may "
     "round its last bit differently on a device (OpenCL and Vulkan allow 2.5 ulp) and so cross "
     "a round-half-even tie"},
    {"dequantize", {0, 0, 0}, {0, 0, 0},
     "scatter_hnd from q8/q4 units: fmaf(scale, code, zero) is exact in f32 (an 11-bit scale "
     "times an 8-bit code needs no rounding before the one addition), then the slot dtype's "
     "nearest-even store: identical bytes"},
    {"dequantize_direct", {0, 0, 0}, {0, 0, 0}, "recall_direct from q8/q4 units: as dequantize"},
    {"attention", {1e-4, 1e-4, 1e-4}, {2e-5, 2e-5, 2e-5},
     "f32 accumulation over stored values (converted exactly), exp and division; order and "
     "exp implementation may differ"},
    {"attention_dense", {1e-4, 1e-4, 1e-4}, {2e-5, 2e-5, 2e-5}, "as attention"},
    {"select_pages", {1e-4, 1e-4, 1e-4}, {1e-4, 1e-4, 1e-4},
     "reduced page scores, relative: f32 with the platform's exp and another summation order of "
     "the softmax; the selected sets may differ only by pages within this of the k-th score"},
    {"pipeline", {1e-4, 2e-3, 1.6e-2}, {-1, -1, -1},
     "decode outputs: attention tolerance, plus 1 ulp of storage rounding of every key and value "
     "(4u) when a backend rounds differently"},
    {"pipeline_q8", {3e-2, 3e-2, 3e-2}, {-1, -1, -1},
     "decode outputs and stored cache (read_kv) with q8 host pages: the quantize may move a code "
     "by one (its tolerance), one step of its group's scale, about range/255 of N(0,1) data; "
     "CPU, PoCL and lavapipe quantize identically and meet the pipeline bound"},
    {"pipeline_q4", {5e-1, 5e-1, 5e-1}, {-1, -1, -1},
     "as pipeline_q8 with q4 pages: one code is about range/15"},
    {"pipeline_kv", {0, 1e-3, 8e-3}, {-1, -1, -1},
     "stored keys/values read back (fkv_context_read_kv): as append"},
    {"selection_tie", {1e-5, 1e-3, 8e-3}, {-1, -1, -1},
     "a page selection may differ from the reference only by pages whose score is within this "
     "(relative to sum |q||k|) of the k-th score"},
};

static const cf_tolerance_row *row_of(const char *op) {
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (strcmp(table[i].op, op) == 0)
            return &table[i];
    return NULL;
}

double cf_tolerance(const char *op, fkv_dtype dtype) {
    const cf_tolerance_row *t = row_of(op);
    /* an op missing from the table must match exactly */
    return t ? t->tol[(unsigned)dtype < 3 ? (unsigned)dtype : 0] : 0.0;
}

double cf_tolerance_strict(const char *op, fkv_dtype dtype) {
    const cf_tolerance_row *t = row_of(op);
    return t ? t->strict[(unsigned)dtype < 3 ? (unsigned)dtype : 0] : 0.0;
}

void cf_tolerance_markdown(FILE *f) {
    fprintf(f, "| op | f32 | f16 | bf16 | strict (f32, f16, bf16) | why |\n"
               "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
        fprintf(f, "| %s | %g | %g | %g | ", table[i].op, table[i].tol[0], table[i].tol[1],
                table[i].tol[2]);
        if (table[i].strict[0] < 0)
            fprintf(f, "- | ");
        else
            fprintf(f, "%g, %g, %g | ", table[i].strict[0], table[i].strict[1],
                    table[i].strict[2]);
        for (const char *p = table[i].why; *p; p++) { /* '|' would end the cell */
            if (*p == '|')
                fputc('\\', f);
            fputc(*p, f);
        }
        fputs(" |\n", f);
    }
}

void cf_tolerance_json(FILE *f) {
    fprintf(f, "{");
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        fprintf(f, "%s\"%s\": {\"f32\": %g, \"f16\": %g, \"bf16\": %g}", i ? ", " : "",
                table[i].op, table[i].tol[0], table[i].tol[1], table[i].tol[2]);
    fprintf(f, "}");
}
