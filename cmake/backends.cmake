# Backend registration. Each backend folder's CMakeLists.txt calls fkv_add_backend() when its
# backend is built (or fkv_backend_off() when it is not), in the order the top-level
# CMakeLists.txt adds the folders: that order is the preference order of FREEKV_BACKEND=auto
# among equal devices. fkv_write_backend_list() then writes the one list everything else
# derives from: the registry (generated/fkv_backend_list.h), the tests that loop over
# backends, the conformance CTest cases, the CMake package and pkg-config files, and the
# configuration summary.
#
# fkv_add_backend(<name> SOURCES <files...>
#                 [DEFINITIONS <defs...>] [INCLUDES <dirs...>] [LIBRARIES <libs...>]
#                 [EXTERNAL_OBJECTS <objects...>] [PC_LIBS <flags...>]
#                 [FIND_DEPENDENCY <args...>] [HIDE_DEVICES <VAR=value...>]
#                 [SANITIZER_TEST_ENVIRONMENT <VAR=value...>] [SUMMARY <text>] [REFERENCE])
#   An OBJECT library freekv_backend_<name> of SOURCES, compiled with DEFINITIONS and INCLUDES
#   and linked (through the library) with LIBRARIES; it must define
#   `const fkv_backend_ops *fkv_backend_<name>(void)`. EXTERNAL_OBJECTS (prebuilt objects, e.g.
#   device code) join the shared and static libraries. PC_LIBS: LIBRARIES as linker flags for
#   pkg-config's Libs.private (absolute paths are passed through). FIND_DEPENDENCY: the
#   arguments of the find_dependency() call the installed CMake package makes for LIBRARIES
#   (none when they are plain paths). REFERENCE marks the backend every other one is tested
#   against (tests/backend_harness.c pairs the others with it). HIDE_DEVICES: an environment
#   under which the backend finds no device (FKV_NO_DEVICE_DIR is an empty folder), for the
#   test that a required backend without a device fails. SANITIZER_TEST_ENVIRONMENT: what its
#   suites (test_<name>, conformance_<name>) need under ASan. SUMMARY: the configure line.
# fkv_backend_off(<name> [SUMMARY <text>])
#   A known backend this build leaves out: FREEKV_BACKEND=<name> then says it is not compiled
#   in, rather than that no such backend exists.

set(FKV_NO_DEVICE_DIR ${CMAKE_BINARY_DIR}/no-device)
file(MAKE_DIRECTORY ${FKV_NO_DEVICE_DIR})

define_property(GLOBAL PROPERTY FKV_BACKENDS_KNOWN BRIEF_DOCS "backend names, preference order"
  FULL_DOCS "every backend folder, built or not")
define_property(GLOBAL PROPERTY FKV_BACKENDS_COMPILED BRIEF_DOCS "backends built"
  FULL_DOCS "the backends compiled into this build, in preference order")

function(fkv_add_backend name)
  cmake_parse_arguments(PARSE_ARGV 1 B "REFERENCE" "SUMMARY"
    "SOURCES;DEFINITIONS;INCLUDES;LIBRARIES;EXTERNAL_OBJECTS;PC_LIBS;FIND_DEPENDENCY;HIDE_DEVICES;SANITIZER_TEST_ENVIRONMENT")
  set(t freekv_backend_${name})
  add_library(${t} OBJECT ${B_SOURCES})
  set_target_properties(${t} PROPERTIES POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
  target_include_directories(${t} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}
    ${CMAKE_BINARY_DIR}/generated ${B_INCLUDES})
  target_compile_definitions(${t} PRIVATE ${B_DEFINITIONS})
  target_link_libraries(${t} PRIVATE freekv_build_flags ${B_LIBRARIES})
  if(B_EXTERNAL_OBJECTS) # built by custom commands of the backend's folder
    add_custom_target(${t}_external DEPENDS ${B_EXTERNAL_OBJECTS})
    add_dependencies(${t} ${t}_external)
  endif()
  set_property(GLOBAL APPEND PROPERTY FKV_BACKENDS_KNOWN ${name})
  set_property(GLOBAL APPEND PROPERTY FKV_BACKENDS_COMPILED ${name})
  set_property(GLOBAL APPEND PROPERTY FKV_BACKEND_OBJECT_TARGETS ${t})
  set_property(GLOBAL APPEND PROPERTY FKV_BACKEND_LIBRARIES ${B_LIBRARIES})
  set_property(GLOBAL APPEND PROPERTY FKV_BACKEND_EXTERNAL_OBJECTS ${B_EXTERNAL_OBJECTS})
  set_property(GLOBAL APPEND PROPERTY FKV_BACKEND_PC_LIBS ${B_PC_LIBS})
  set_property(GLOBAL PROPERTY FKV_BACKEND_HIDE_DEVICES_${name} ${B_HIDE_DEVICES})
  set_property(GLOBAL PROPERTY FKV_BACKEND_SANITIZER_ENV_${name} ${B_SANITIZER_TEST_ENVIRONMENT})
  if(B_FIND_DEPENDENCY)
    list(JOIN B_FIND_DEPENDENCY " " dep)
    set_property(GLOBAL APPEND_STRING PROPERTY FKV_BACKEND_FIND_DEPENDENCIES
      "find_dependency(${dep})\n")
  endif()
  if(B_REFERENCE)
    set_property(GLOBAL PROPERTY FKV_BACKEND_REFERENCE ${name})
  endif()
  if(NOT B_SUMMARY)
    set(B_SUMMARY ON)
  endif()
  fkv_summary_line(${name} "${B_SUMMARY}")
endfunction()

function(fkv_backend_off name)
  cmake_parse_arguments(PARSE_ARGV 1 B "" "SUMMARY" "")
  set_property(GLOBAL APPEND PROPERTY FKV_BACKENDS_KNOWN ${name})
  if(NOT B_SUMMARY)
    set(B_SUMMARY OFF)
  endif()
  fkv_summary_line(${name} "${B_SUMMARY}")
endfunction()

# "<name> backend      : <text>", aligned with the other lines of the configure summary.
function(fkv_summary_line name text)
  set(label "${name} backend")
  string(LENGTH "${label}" n)
  while(n LESS 22)
    string(APPEND label " ")
    math(EXPR n "${n} + 1")
  endwhile()
  set_property(GLOBAL APPEND PROPERTY FKV_SUMMARY "${label}: ${text}")
endfunction()

# Writes ${CMAKE_BINARY_DIR}/generated/fkv_backend_list.h (only when its text changes, so that
# reconfiguring rebuilds nothing) and sets, in the caller's scope, FKV_BACKENDS_KNOWN,
# FKV_BACKENDS_COMPILED, FKV_BACKEND_REFERENCE and FKV_DEVICE_BACKENDS (compiled, not the
# reference).
function(fkv_write_backend_list)
  get_property(known GLOBAL PROPERTY FKV_BACKENDS_KNOWN)
  get_property(compiled GLOBAL PROPERTY FKV_BACKENDS_COMPILED)
  get_property(reference GLOBAL PROPERTY FKV_BACKEND_REFERENCE)
  set(k "")
  foreach(n ${known})
    string(APPEND k " X(${n})")
  endforeach()
  set(c "")
  foreach(n ${compiled})
    string(APPEND c " X(${n})")
  endforeach()
  set(text "/* Generated by cmake/backends.cmake: edit the backend folders, not this file. */\n"
    "#ifndef FKV_BACKEND_LIST_H\n#define FKV_BACKEND_LIST_H\n"
    "/* Every backend folder, in the preference order of FREEKV_BACKEND=auto. */\n"
    "#define FKV_BACKENDS_KNOWN(X)${k}\n"
    "/* The backends compiled in, in the same order (each defines fkv_backend_<name>()). */\n"
    "#define FKV_BACKENDS_COMPILED(X)${c}\n#endif\n")
  string(JOIN "" text ${text})
  set(out ${CMAKE_BINARY_DIR}/generated/fkv_backend_list.h)
  set(old "")
  if(EXISTS ${out})
    file(READ ${out} old)
  endif()
  if(NOT old STREQUAL text)
    file(WRITE ${out} "${text}")
  endif()
  set(device ${compiled})
  list(REMOVE_ITEM device ${reference})
  set(FKV_BACKENDS_KNOWN ${known} PARENT_SCOPE)
  set(FKV_BACKENDS_COMPILED ${compiled} PARENT_SCOPE)
  set(FKV_BACKEND_REFERENCE ${reference} PARENT_SCOPE)
  set(FKV_DEVICE_BACKENDS ${device} PARENT_SCOPE)
endfunction()
