# Turns the console's page files into C arrays at build time:
#   cmake -DOUT=console_assets.c -DSRC=<dir> -DFILES=index.html,app.js,style.css -P embed.cmake
# The committed files are the HTML/JS/CSS sources; the C file lives in the build tree.
string(REPLACE "," ";" FILES "${FILES}")
set(types_html "text/html; charset=utf-8")
set(types_js "text/javascript; charset=utf-8")
set(types_css "text/css; charset=utf-8")

set(body "/* Generated from broker/console/ by embed.cmake: do not edit. */\n#include <stddef.h>\n\n")
set(table "")
set(i 0)
foreach(f ${FILES})
  file(READ "${SRC}/${f}" hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n"
                       bytes "${bytes}")
  get_filename_component(ext "${f}" EXT)
  string(SUBSTRING "${ext}" 1 -1 ext)
  set(body "${body}static const unsigned char asset${i}[] = {\n${bytes}0};\n\n")
  set(table "${table}    {\"${f}\", \"${types_${ext}}\", asset${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
set(body "${body}struct bb_console_asset {\n    const char *path;\n    const char *type;\n"
         "    const unsigned char *data;\n    size_t len;\n};\n\n"
         "const struct bb_console_asset bb_console_assets[] = {\n${table}};\n"
         "const size_t bb_console_nassets = ${i};\n")
file(WRITE "${OUT}.tmp" "${body}")
file(RENAME "${OUT}.tmp" "${OUT}")
