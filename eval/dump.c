/* The --dump record writer (dump.h). */
#include "dump.h"

#include "json.h"

static void put_pages(FILE *f, const int32_t *pages, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ", %d" : "%d", pages[i]);
    fputc(']', f);
}

void fkv_eval_dump_write(FILE *f, const fkv_eval_dump_record *r) {
    fprintf(f, "{\"policy\": ");
    fkv_json_put_str(f, r->policy);
    fprintf(f, ", \"step\": %u, \"layer\": %u, \"kv_head\": %u, \"pages\": ", r->step, r->layer,
            r->kv_head);
    put_pages(f, r->pages, r->n_pages);
    fprintf(f, ", \"corrected\": %s, \"group_cosine\": ",
            r->corrected < 0 ? "null" : r->corrected ? "true" : "false");
    fkv_json_put_num(f, r->group_cosine);
    fprintf(f, ", \"mass\": [");
    for (uint32_t j = 0; j < r->group; j++) {
        if (j)
            fprintf(f, ", ");
        fkv_json_put_num(f, r->mass[j]);
    }
    fprintf(f, "], \"exact_pages\": ");
    put_pages(f, r->exact, r->n_exact);
    fprintf(f, ", \"exact_kept\": ");
    fkv_json_put_num(f, r->exact_kept);
    fprintf(f, "}\n");
}
