/* A deliberate write-write data race: every work-item writes its own id to x[0]. CI runs it
 * under Oclgrind first (tools/ci-oclgrind.sh): if no race is reported, the checker is not
 * working and the job fails instead of passing silently. */
__kernel void race(__global int *x) { x[0] = (int)get_global_id(0); }
