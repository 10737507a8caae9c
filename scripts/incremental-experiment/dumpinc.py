import struct,sys,os
for p in sys.argv[1:]:
    d=open(p,'rb').read()
    magic,nb,tbl=struct.unpack_from('<III',d,0)
    blocks=struct.unpack_from('<%dI'%nb,d,12)
    hdr=12+4*nb
    if nb>0 and hdr%8192: hdr+=8192-hdr%8192
    print(os.path.basename(p), 'size',len(d),'magic %#x'%magic,'nblocks',nb,'trunc_len',tbl,'blocks',list(blocks)[:12],'...' if nb>12 else '', 'hdr',hdr,'expected size',hdr+8192*nb)
