/* freekv-opbench: main (the tool is fkv_opbench_main in opbench.c, which the tests call). */
int fkv_opbench_main(int argc, char **argv);

int main(int argc, char **argv) { return fkv_opbench_main(argc, argv); }
