"""Writes the `lidc_xml` fuzz target's seeds into the folder given: two cuts of
LIDC-IDRI-0001's reader XML from $LUNGCAD_DATA (its header, the first reader's first two
nodules with two of their contours, two non-nodules), one with the real imageZpositions and
one with them moved onto the fuzz entry's slices (0 to 7 mm)."""

import glob
import os
import re
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.nih.gov}"
data = os.environ.get("LUNGCAD_DATA", os.path.join(os.path.dirname(__file__), "../../shared/data"))
[xml] = glob.glob(os.path.join(data, "lidc", "**", "*.xml"), recursive=True)
root = ET.parse(xml).getroot()
sessions = root.findall(NS + "readingSession")
for s in sessions[1:]:
    root.remove(s)
first = sessions[0]
for n in first.findall(NS + "unblindedReadNodule")[2:]:
    first.remove(n)
for n in first.findall(NS + "nonNodule")[2:]:
    first.remove(n)
big = first.findall(NS + "unblindedReadNodule")[0]
for r in big.findall(NS + "roi")[2:]:
    big.remove(r)
ET.register_namespace("", "http://www.nih.gov")
text = ET.tostring(root).decode()
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "seed_lidc.xml"), "w") as f:
    f.write(text)
zs = sorted(set(re.findall(r"<imageZposition>([^<]*)</imageZposition>", text)))
for i, z in enumerate(zs):
    text = text.replace(f"<imageZposition>{z}</imageZposition>", f"<imageZposition>{i % 8}.000000 </imageZposition>")
with open(os.path.join(out, "seed_lidc_z.xml"), "w") as f:
    f.write(text)
