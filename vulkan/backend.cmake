# Vulkan backend: ON when the Vulkan headers + loader and glslc are found. Shaders are compiled
# to SPIR-V at build time, one glslc command per shader variant, and embedded as binary arrays
# (vulkan/embed_spirv.cmake; CMake only).
find_package(Vulkan QUIET COMPONENTS glslc)
set(_fkv_vulkan_default OFF)
if(Vulkan_FOUND AND Vulkan_GLSLC_EXECUTABLE)
  set(_fkv_vulkan_default ON)
endif()
option(FREEKV_VULKAN "Build the Vulkan backend" ${_fkv_vulkan_default})
if(FREEKV_VULKAN)
  find_package(Vulkan REQUIRED COMPONENTS glslc)
  set(_vk_dir ${PROJECT_SOURCE_DIR}/vulkan)
  set(_vk_out ${CMAKE_BINARY_DIR}/vulkan_spirv)
  file(MAKE_DIRECTORY ${_vk_out})
  # name|source|defines (comma-separated). Must match the shader ids of vulkan/vk_internal.h.
  set(_vk_variants
    "append_f32|append.comp|FKV_DTYPE=0,FKV_S16=0"
    "append_f16|append.comp|FKV_DTYPE=1,FKV_S16=1"
    "append_bf16|append.comp|FKV_DTYPE=2,FKV_S16=1"
    "append_f16w|append.comp|FKV_DTYPE=1,FKV_S16=0"
    "append_bf16w|append.comp|FKV_DTYPE=2,FKV_S16=0"
    "summarize_f32|summarize.comp|FKV_DTYPE=0,FKV_S16=0"
    "summarize_f16|summarize.comp|FKV_DTYPE=1,FKV_S16=1"
    "summarize_bf16|summarize.comp|FKV_DTYPE=2,FKV_S16=1"
    "summarize_f16w|summarize.comp|FKV_DTYPE=1,FKV_S16=0"
    "summarize_bf16w|summarize.comp|FKV_DTYPE=2,FKV_S16=0"
    "attention_f32|attention.comp|FKV_DTYPE=0,FKV_S16=0"
    "attention_f16|attention.comp|FKV_DTYPE=1,FKV_S16=1"
    "attention_bf16|attention.comp|FKV_DTYPE=2,FKV_S16=1"
    "attention_f16w|attention.comp|FKV_DTYPE=1,FKV_S16=0"
    "attention_bf16w|attention.comp|FKV_DTYPE=2,FKV_S16=0"
    "scores|scores.comp|FKV_DTYPE=0,FKV_S16=0"
    "cosine|cosine.comp|FKV_DTYPE=0,FKV_S16=0"
    "attention_reduce|attention_reduce.comp|FKV_DTYPE=0,FKV_S16=0")
  foreach(mode 0 1 2)
    foreach(word 16 4 2 1)
      list(APPEND _vk_variants "copy${mode}_w${word}|copy.comp|MODE=${mode},WORD=${word}")
    endforeach()
  endforeach()
  file(GLOB _vk_includes CONFIGURE_DEPENDS ${_vk_dir}/*.glsl)
  set(_vk_spv "")
  set(_vk_names "")
  foreach(v ${_vk_variants})
    string(REPLACE "|" ";" parts "${v}")
    list(GET parts 0 name)
    list(GET parts 1 src)
    list(GET parts 2 defs)
    string(REPLACE "," ";" defs "${defs}")
    set(dflags "")
    foreach(d ${defs})
      list(APPEND dflags "-D${d}")
    endforeach()
    set(spv ${_vk_out}/${name}.spv)
    add_custom_command(OUTPUT ${spv}
      COMMAND ${Vulkan_GLSLC_EXECUTABLE} --target-env=vulkan1.1 -O -Werror ${dflags}
              -I ${_vk_dir} ${_vk_dir}/${src} -o ${spv}
      DEPENDS ${_vk_dir}/${src} ${_vk_includes}
      COMMENT "glslc ${name}.spv" VERBATIM)
    list(APPEND _vk_spv ${spv})
    list(APPEND _vk_names ${name})
  endforeach()
  set(_vk_embed ${CMAKE_BINARY_DIR}/vulkan_shaders.c)
  add_custom_command(OUTPUT ${_vk_embed}
    COMMAND ${CMAKE_COMMAND} -DOUT=${_vk_embed} "-DNAMES=${_vk_names}" -DDIR=${_vk_out}
            -P ${_vk_dir}/embed_spirv.cmake
    DEPENDS ${_vk_spv} ${_vk_dir}/embed_spirv.cmake
    COMMENT "Embedding SPIR-V" VERBATIM)
  file(GLOB FKV_VK_SOURCES CONFIGURE_DEPENDS ${_vk_dir}/*.c)
  list(APPEND FKV_SOURCES ${FKV_VK_SOURCES} ${_vk_embed})
  list(APPEND FKV_DEFS FKV_HAVE_VULKAN)
  list(APPEND FKV_LIBS Vulkan::Vulkan)
endif()
list(APPEND FKV_SUMMARY "Vulkan backend        : ${FREEKV_VULKAN}")
