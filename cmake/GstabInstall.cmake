# What `cmake --install` puts under the prefix: the daemon and the operator's command line,
# the C ABI library and its header, and how other builds find them: a CMake package
# (`find_package(gstab CONFIG)`, target `gstab::gstab`) and a pkg-config file (`gstab`).
# The container image (deploy/container) installs this.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
# Installed binaries keep the folders of libraries outside the system's (CUDA's, NCCL's).
set_target_properties(gstabd gstabctl gstab_shared PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
set_target_properties(gstab_shared PROPERTIES EXPORT_NAME gstab)
install(TARGETS gstabd gstabctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS gstab_shared EXPORT gstabTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/client_lib/gstab.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/gstab)

set(GSTAB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/gstab)
install(EXPORT gstabTargets NAMESPACE gstab:: DESTINATION ${GSTAB_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/gstabConfig.cmake.in
  ${PROJECT_BINARY_DIR}/gstabConfig.cmake INSTALL_DESTINATION ${GSTAB_CMAKE_DIR})
# The C ABI changes by adding within a minor version (docs/daemon.md, "Between releases").
write_basic_package_version_file(${PROJECT_BINARY_DIR}/gstabConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/gstabConfig.cmake ${PROJECT_BINARY_DIR}/gstabConfigVersion.cmake
  DESTINATION ${GSTAB_CMAKE_DIR})
# Relocatable: the prefix is found from the file's own folder (`cmake --install --prefix`
# chooses it after configuring).
file(RELATIVE_PATH GSTAB_PC_TO_PREFIX /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" GSTAB_PC_TO_PREFIX "${GSTAB_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/gstab.pc.in ${PROJECT_BINARY_DIR}/gstab.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/gstab.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
