# Shared build settings and the one test-registration helper.

find_program(GSTAB_CCACHE ccache)
if(GSTAB_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${GSTAB_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${GSTAB_CCACHE})
endif()

# Strict warnings for gstab's own targets (generated protobuf code is exempt).
function(gstab_strict_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
      -Wconversion -Wno-sign-conversion $<$<BOOL:${GSTAB_WERROR}>:-Werror>>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra $<$<BOOL:${GSTAB_WERROR}>:-Werror=all-warnings>>)
endfunction()

# gstab_add_test(NAME <name> SOURCES <files...> [LIBS <targets...>] [LABELS <labels...>])
# Builds one GoogleTest binary and registers it with ctest under the given labels.
function(gstab_add_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  gstab_strict_warnings(${T_NAME})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  set(labels ${T_LABELS})
  if(NOT labels)
    set(labels unit)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${labels}" TIMEOUT 600)
  if("gpu" IN_LIST labels)
    # One at a time: the leak checks read the whole device's free memory. (No skip pattern:
    # gtest's "[  PASSED  ] 0 tests" is printed as well when every case failed.)
    set_tests_properties(${T_NAME} PROPERTIES RESOURCE_LOCK gpu)
  endif()
endfunction()

# An end-to-end test: it runs the real binaries RUNS (built before it), through gstab::testing.
function(gstab_add_e2e_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;RUNS" ${ARGN})
  gstab_add_test(NAME ${T_NAME} SOURCES ${T_SOURCES} LIBS gstab::testing LABELS e2e)
  add_dependencies(${T_NAME} ${T_RUNS})
endfunction()
