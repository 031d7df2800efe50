/* freekv-info: the backends compiled in, the devices they find, and what "auto" picks. */
#include <stdio.h>
#include <string.h>

#include "freekv.h"

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
