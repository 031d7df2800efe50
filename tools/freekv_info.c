/* freekv-info: the backends compiled in, the devices they find, how each would recall pages,
 * and what "auto" picks. */
#include <stdio.h>
#include <string.h>

#include "backends/dispatch.h"
#include "freekv.h"

/* Opens the device to ask its recall mechanism and, when the backend chose it itself, why
 * (e.g. Vulkan's "auto" falling back to staged because host memory cannot be imported). */
static void print_recall(const fkv_device_info *info) {
    static const char *const modes[] = {"staged", "direct (zero-copy)", "perpage"};
    char idx[16];
    snprintf(idx, sizeof idx, "%u", info->index);
    fkv_device *d = NULL;
    if (fkv_device_open(info->backend, idx, &d) != FKV_OK) {
        printf("        recall: ? (opening failed: %s)\n", fkv_last_error());
        return;
    }
    unsigned m = (unsigned)fkv_op_recall_mode(d);
    const char *note = fkv_op_recall_note(d);
    printf("        recall %s%s%s%s\n", m < 3 ? modes[m] : "?", note[0] ? " (" : "", note,
           note[0] ? ")" : "");
    char queues[256]; /* which hardware queues the backend chose, where it says */
    if (fkv_op_get_option(d, "queues", queues, sizeof queues) == FKV_OK)
        printf("        queues: %s\n", queues);
    fkv_device_close(d);
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: freekv-info\n"
               "Lists backends, devices and capabilities; FREEKV_BACKEND and FREEKV_DEVICE\n"
               "select the device that 'auto' reports.\n");
        return 0;
    }
    printf("freekv %d.%d.%d\nbackends compiled in:", FKV_VERSION_MAJOR, FKV_VERSION_MINOR,
           FKV_VERSION_PATCH);
    for (size_t i = 0; i < fkv_backend_count(); i++)
        printf(" %s", fkv_backend_name(i));
    printf("\n\n");
    fkv_device_info list[64];
    size_t n = 0;
    if (fkv_device_list("auto", list, 64, &n) != FKV_OK) {
        fprintf(stderr, "freekv-info: %s\n", fkv_last_error());
        return 1;
    }
    printf("devices (%zu):\n", n);
    for (size_t i = 0; i < n && i < 64; i++) {
        char caps[256];
        fkv_caps_string(list[i].caps, caps, sizeof caps);
        printf("  [%zu] %-7s #%u  %s\n", i, list[i].backend, list[i].index, list[i].name);
        printf("        type %s, memory %.1f GiB (max buffer %.1f GiB), driver %s\n",
               fkv_device_type_name(list[i].type), list[i].memory_bytes / 1073741824.0,
               list[i].max_buffer_bytes / 1073741824.0, list[i].driver);
        printf("        caps %s\n", caps[0] ? caps : "(none)");
        print_recall(&list[i]);
    }
    fkv_device_info pick;
    if (fkv_device_pick(NULL, NULL, &pick) != FKV_OK) {
        fprintf(stderr, "\nfreekv-info: selection failed: %s\n", fkv_last_error());
        return 1;
    }
    printf("\nselected (FREEKV_BACKEND/FREEKV_DEVICE, default auto): %s #%u %s\n", pick.backend,
           pick.index, pick.name);
    return 0;
}
