# Decides what of CUDA is built. AUTO builds the CUDA kernels and the client's CUDA gradients
# wherever nvcc is found, and gstabd's CUDA backend where NCCL is found too, so build machines
# without a GPU still compile every .cu file; ON requires both; OFF builds the CPU backend alone.
#   GSTAB_HAVE_CUDA: nvcc (kernels/cuda, the client's CudaGradients)
#   GSTAB_HAVE_CUDA_BACKEND: nvcc and NCCL (gstabd's CUDA backend, server/cuda)

# Sets `out` to GSTAB_CUDA_ARCHITECTURES, or where that is empty to the architectures of this
# machine's GPUs (nvidia-smi's compute capabilities), so that the GPU tests run on the GPU that
# builds them; 90 (Hopper) where there is none. A GPU newer than this nvcc knows gets nvcc's
# newest (its PTX runs there); one older than nvcc supports is left out, with a warning.
function(gstab_cuda_architectures out)
  if(GSTAB_CUDA_ARCHITECTURES)
    set(${out} ${GSTAB_CUDA_ARCHITECTURES} PARENT_SCOPE)
    return()
  endif()
  execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --list-gpu-arch
                  OUTPUT_VARIABLE listed RESULT_VARIABLE rc ERROR_QUIET)
  string(REGEX MATCHALL "compute_[0-9]+" supported "${listed}")
  list(TRANSFORM supported REPLACE "compute_" "")
  set(newest 0)
  foreach(a IN LISTS supported)
    if(a GREATER newest)
      set(newest ${a})
    endif()
  endforeach()
  set(archs "")
  find_program(GSTAB_NVIDIA_SMI nvidia-smi)
  if(GSTAB_NVIDIA_SMI)
    execute_process(COMMAND ${GSTAB_NVIDIA_SMI} --query-gpu=compute_cap --format=csv,noheader
                    OUTPUT_VARIABLE caps RESULT_VARIABLE rc ERROR_QUIET)
    string(REPLACE "\n" ";" lines "${caps}")
    foreach(line IN LISTS lines)
      string(STRIP "${line}" line)
      if(NOT line MATCHES "^([0-9]+)\\.([0-9]+)$")  # other lines are nvidia-smi's warnings
        continue()
      endif()
      set(a "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
      if(a IN_LIST supported)
        list(APPEND archs ${a})
      elseif(newest GREATER 0 AND a GREATER newest)
        list(APPEND archs ${newest})
      else()
        message(WARNING "this machine's GPU of compute capability ${line} is not one "
                        "${CMAKE_CUDA_COMPILER} compiles for: the GPU tests will not run on it")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES archs)
  endif()
  if(NOT archs)
    set(archs 90)
  endif()
  message(STATUS "gstab CUDA architectures: ${archs}")
  set(${out} ${archs} PARENT_SCOPE)
endfunction()

string(TOUPPER "${GSTAB_CUDA}" GSTAB_CUDA)
set(GSTAB_HAVE_CUDA OFF)
set(GSTAB_HAVE_CUDA_BACKEND OFF)
if(NOT GSTAB_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    gstab_cuda_architectures(CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(GSTAB_HAVE_CUDA ON)
    # The cross-node stage of gstabd's CUDA pipeline is NCCL's.
    find_library(GSTAB_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    find_path(GSTAB_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    if(GSTAB_NCCL_LIBRARY AND GSTAB_NCCL_INCLUDE_DIR)
      set(GSTAB_HAVE_CUDA_BACKEND ON)
    elseif(GSTAB_CUDA STREQUAL "ON")
      message(FATAL_ERROR "GSTAB_CUDA=ON needs NCCL (libnccl and nccl.h, for example "
                          "libnccl-dev from NVIDIA's repository), which was not found")
    else()
      message(WARNING "nvcc found but not NCCL (libnccl and nccl.h): gstabd builds without its "
                      "CUDA backend (the client library still registers CUDA gradients). "
                      "Install NCCL (libnccl-dev) for gstabd's CUDA backend")
    endif()
  elseif(GSTAB_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GSTAB_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "gstab CUDA: kernels and client ${GSTAB_HAVE_CUDA}, gstabd backend "
               "${GSTAB_HAVE_CUDA_BACKEND}")
