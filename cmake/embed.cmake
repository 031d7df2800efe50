# Run as a script: cmake -DOUT=file.c -DNAME=symbol -DINPUTS="a;b" -P embed.cmake
# Writes `const char NAME[]` holding the files' text concatenated, and NAME_size.
set(body "")
foreach(f IN LISTS INPUTS)
  file(READ "${f}" hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(APPEND body "${hex}")
endforeach()
file(WRITE "${OUT}.tmp"
  "/* generated from ${INPUTS} */\n#include <stddef.h>\n"
  "const char ${NAME}[] = {${body}0x00};\n"
  "const size_t ${NAME}_size = sizeof(${NAME}) - 1;\n")
file(RENAME "${OUT}.tmp" "${OUT}")
